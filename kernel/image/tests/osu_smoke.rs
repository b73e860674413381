//! Smoke test of the OSU micro-benchmark ports (benches/osu): every benchmark
//! runs in a real VM (2 ranks on 2 vCPUs; the collectives also with 4 ranks)
//! with tiny iteration counts and sizes up to 1 KiB, and prints OSU's format:
//! the header lines, then `%-10d%18.2f` rows for each power-of-two size.
//! The full comparison is `bash benches/osu/run.sh`, not a test.

use std::time::Duration;

use toro_abi::status;
use toro_image::vmtest::{accels, image, Accel, Vm};

const BENCHES: [(&str, &str); 11] = [
    ("latency", "# OSU MPI Latency Test v7.3"),
    ("bw", "# OSU MPI Bandwidth Test v7.3"),
    ("bibw", "# OSU MPI Bi-Directional Bandwidth Test v7.3"),
    ("barrier", "# OSU MPI Barrier Latency Test v7.3"),
    ("bcast", "# OSU MPI Broadcast Latency Test v7.3"),
    ("reduce", "# OSU MPI Reduce Latency Test v7.3"),
    ("allreduce", "# OSU MPI Allreduce Latency Test v7.3"),
    ("gather", "# OSU MPI Gather Latency Test v7.3"),
    ("scatter", "# OSU MPI Scatter Latency Test v7.3"),
    ("allgather", "# OSU MPI Allgather Latency Test v7.3"),
    ("alltoall", "# OSU MPI All-to-All Personalized Exchange Latency Test v7.3"),
];

fn plan(cpus: usize, ranks: usize) -> String {
    format!("cpus={cpus} world={ranks} ranks=0-{last} vm=0 vms=1 place=0-{last}@{cpus}", last = ranks - 1)
}

/// Rank 0's lines, without the console's `[rank 0] ` prefix.
fn rank0(output: &str) -> Vec<String> {
    output.lines().filter_map(|l| l.strip_prefix("[rank 0] ")).map(|l| l.trim_end().to_string()).collect()
}

fn check_format(bench: &str, title: &str, lines: &[String], output: &str) {
    let fail = |why: &str| -> ! { panic!("osu {bench}: {why}; output:\n{output}") };
    if lines.first().map(String::as_str) != Some(title) {
        fail("first line is not the OSU title");
    }
    let value = |text: &str| -> f64 {
        let (int, frac) = text.split_once('.').unwrap_or_else(|| fail(&format!("{text:?} is not %.2f")));
        if frac.len() != 2 || !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            fail(&format!("{text:?} is not %.2f"));
        }
        let v: f64 = text.parse().unwrap();
        // Tiny runs under TCG can print 0.00 MB/s for 1-byte messages.
        if !(v.is_finite() && v >= 0.0) {
            fail(&format!("value {v} is negative"));
        }
        v
    };
    if bench == "barrier" {
        assert_eq!(lines.get(1).map(String::as_str), Some("# Avg Latency(us)"), "{output}");
        let row = lines.get(2).unwrap_or_else(|| fail("no result line"));
        assert_eq!(row.len(), 17, "barrier value right-aligned in 17 columns: {row:?}");
        value(row.trim());
        return;
    }
    let datatype = if bench.ends_with("reduce") { "# Datatype: MPI_FLOAT." } else { "# Datatype: MPI_CHAR." };
    assert_eq!(lines.get(1).map(String::as_str), Some(datatype), "{output}");
    let column = if bench.ends_with("bw") { "Bandwidth (MB/s)" } else { "Avg Latency(us)" };
    assert_eq!(lines.get(2).cloned(), Some(format!("{:<10}{:>18}", "# Size", column)), "{output}");
    let first = if bench.ends_with("reduce") { 4 } else { 1 };
    let expected: Vec<u64> = (0..=10).map(|e| 1u64 << e).filter(|s| *s >= first).collect();
    let rows = &lines[3..];
    assert_eq!(rows.len(), expected.len(), "one row per size: {output}");
    for (row, size) in rows.iter().zip(expected) {
        let (left, right) = row.split_at(10.min(row.len()));
        assert_eq!(left.trim_end(), size.to_string(), "size column (%-10d): {row:?}");
        assert!(right.len() == 18 && right.starts_with(' '), "value column (%18.2f): {row:?}");
        value(right.trim_start());
    }
}

fn run(accel: Accel, ranks: usize, bench: &str) -> String {
    let osu = image("toro-osu", "toro-osu");
    let args = format!("{} -- {bench} -m 1024 -i 3 -x 1 -W 4", plan(2, ranks));
    let timeout = match accel {
        Accel::Tcg => Duration::from_secs(120),
        Accel::Kvm => Duration::from_secs(60),
    };
    let r = Vm::new(&osu, accel).smp(2).mem("256M").append(&args).timeout(timeout).run();
    eprintln!("osu {bench} {accel:?} np={ranks}: {:?}", r.elapsed);
    r.assert_status(status::OK);
    r.output
}

#[test]
fn every_osu_benchmark_runs_and_prints_the_osu_format() {
    for accel in accels() {
        for (bench, title) in BENCHES {
            let output = run(accel, 2, bench);
            check_format(bench, title, &rank0(&output), &output);
        }
    }
}

#[test]
fn osu_collectives_run_with_4_ranks_on_2_vcpus() {
    for accel in accels() {
        for (bench, title) in BENCHES.iter().filter(|(b, _)| ["barrier", "allreduce", "alltoall"].contains(b)) {
            let output = run(accel, 4, bench);
            check_format(bench, title, &rank0(&output), &output);
        }
    }
}

#[test]
fn point_to_point_benchmarks_refuse_other_than_two_ranks() {
    let accel = accels()[0];
    let osu = image("toro-osu", "toro-osu");
    let r = Vm::new(&osu, accel).smp(2).mem("256M").append(&format!("{} -- latency -m 8 -i 1", plan(2, 4))).run();
    assert_eq!(r.status, Some(1), "{}", r.output);
    r.assert_line("This test requires exactly two processes");
}
