/* The C twin of examples/mpi-suite/src/osu.rs (same method, same output lines) for the host MPIs:
   8 B and 1 KiB latency, bandwidth at 64 KiB / 1 MiB / 4 MiB, 8 B collectives; each latency and
   collective also as the fastest batch of 100 calls. Run by benches/osu/quick/run.sh. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static double lat(int rank, int size, int iters, double *best_us) {
  char *o = calloc(size + 1, 1), *i = calloc(size + 1, 1); int warm = iters / 10; double t = 0, bs = 0, best = 1e30; int peer = 1 - rank;
  for (int k = 0; k < warm + iters; k++) {
    if (k == warm) { MPI_Barrier(MPI_COMM_WORLD); t = MPI_Wtime(); bs = t; }
    if (k > warm && (k - warm) % 100 == 0) { double now = MPI_Wtime(); if (now - bs < best) best = now - bs; bs = now; }
    if (rank == 0) { MPI_Send(o, size, MPI_CHAR, peer, 1, MPI_COMM_WORLD); MPI_Recv(i, size, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE); }
    else { MPI_Recv(i, size, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE); MPI_Send(o, size, MPI_CHAR, peer, 1, MPI_COMM_WORLD); }
  }
  *best_us = best * 1e6 / 200.0;
  return (MPI_Wtime() - t) * 1e6 / (2.0 * iters);
}
static double bw(int rank, int size, int loops) {
  int window = (32 << 20) / size; if (window > 64) window = 64; if (window < 1) window = 1;
  char *o = malloc(size); memset(o, 2, size); char **in = malloc(window * sizeof(char *));
  for (int w = 0; w < window; w++) { in[w] = malloc(size); memset(in[w], 0, size); }
  MPI_Request req[64]; int peer = 1 - rank; int warm = loops / 10 > 0 ? loops / 10 : 1; double t = 0; unsigned ack = 0;
  for (int k = 0; k < warm + loops; k++) {
    if (k == warm) { MPI_Barrier(MPI_COMM_WORLD); t = MPI_Wtime(); }
    if (rank == 0) {
      for (int w = 0; w < window; w++) MPI_Isend(o, size, MPI_CHAR, peer, 2, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
      MPI_Recv(&ack, 1, MPI_UNSIGNED, peer, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      for (int w = 0; w < window; w++) MPI_Irecv(in[w], size, MPI_CHAR, peer, 2, MPI_COMM_WORLD, &req[w]);
      MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
      MPI_Send(&ack, 1, MPI_UNSIGNED, peer, 3, MPI_COMM_WORLD);
    }
  }
  return (double)size * window * loops / (MPI_Wtime() - t) / 1e9;
}
int main(int argc, char **argv) {
  MPI_Init(&argc, &argv); int rank, n; MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &n);
  int iters = argc > 1 ? atoi(argv[1]) : 10000;
  if (n == 2) {
    int sz[2] = {8, 1024};
    for (int s = 0; s < 2; s++) { double b, u = lat(rank, sz[s], iters, &b); if (!rank) printf("osu: latency %d B %.3f us (best batch %.3f us)\n", sz[s], u, b); }
    int bsz[3] = {64 << 10, 1 << 20, 4 << 20}; int lp[3] = {iters / 50, iters / 500, iters / 2000};
    for (int s = 0; s < 3; s++) { double g = bw(rank, bsz[s], lp[s] < 3 ? 3 : lp[s]); if (!rank) printf("osu: bandwidth %d KiB %.2f GB/s\n", bsz[s] >> 10, g); }
  }
  unsigned long x = rank, y = 0, *all = calloc(n, sizeof(unsigned long));
  const char *names[6] = {"barrier", "bcast", "reduce", "allreduce", "gather", "scatter"};
  for (int c = 0; c < 6; c++) {
    double t = 0, bs = 0, best = 1e30;
    for (int k = 0; k < iters / 10 + iters; k++) {
      if (k == iters / 10) { MPI_Barrier(MPI_COMM_WORLD); t = MPI_Wtime(); bs = t; }
      if (k > iters / 10 && (k - iters / 10) % 100 == 0) { double now = MPI_Wtime(); if (now - bs < best) best = now - bs; bs = now; }
      switch (c) {
        case 0: MPI_Barrier(MPI_COMM_WORLD); break;
        case 1: MPI_Bcast(&y, 1, MPI_UNSIGNED_LONG, 0, MPI_COMM_WORLD); break;
        case 2: MPI_Reduce(&x, &y, 1, MPI_UNSIGNED_LONG, MPI_SUM, 0, MPI_COMM_WORLD); break;
        case 3: MPI_Allreduce(&x, &y, 1, MPI_UNSIGNED_LONG, MPI_SUM, MPI_COMM_WORLD); break;
        case 4: MPI_Gather(&x, 1, MPI_UNSIGNED_LONG, all, 1, MPI_UNSIGNED_LONG, 0, MPI_COMM_WORLD); break;
        case 5: MPI_Scatter(all, 1, MPI_UNSIGNED_LONG, &y, 1, MPI_UNSIGNED_LONG, 0, MPI_COMM_WORLD); break;
      }
    }
    double mine[2] = {(MPI_Wtime() - t) * 1e6 / iters, best * 1e6 / 100}, worst[2]; MPI_Allreduce(mine, worst, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (!rank) printf("osu: %s %d ranks 8 B %.3f us (best batch %.3f us)\n", names[c], n, worst[0], worst[1]);
  }
  MPI_Finalize(); return 0;
}
