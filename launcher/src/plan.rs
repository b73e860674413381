//! The job plan: which rank lives in which VM and on which core, each VM's
//! vCPUs, memory, addresses and kernel command line. Pure data, no I/O.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use toro_abi::cmdline::needs_escape;
use toro_abi::layout::STACK_SLOTS;
use toro_abi::{CMDLINE_MAX, MAX_CPUS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapBy {
    /// Consecutive ranks share a VM: 0-3 on VM 0, 4-7 on VM 1.
    Block,
    /// Ranks are dealt round-robin: 0,2,4,6 on VM 0, 1,3,5,7 on VM 1.
    Cyclic,
}

impl MapBy {
    pub fn name(self) -> &'static str {
        match self {
            MapBy::Block => "block",
            MapBy::Cyclic => "cyclic",
        }
    }
}

/// Everything the plan depends on, already checked for type.
#[derive(Clone, Debug)]
pub struct PlanInput {
    pub np: u32,
    pub vms: Option<u32>,
    pub ranks_per_vm: Option<u32>,
    pub cpus_per_vm: Option<u32>,
    pub map_by: MapBy,
    pub host_cores: u32,
    pub mem_mib: u64,
    pub job_id: String,
    pub spin_ns: Option<u64>,
    /// `(NAME, VALUE)` for the application.
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    pub index: u32,
    /// World ranks in this VM, ascending; slot `s` runs on core `s % cpus`.
    pub ranks: Vec<u32>,
    pub cpus: u32,
    pub mem_mib: u64,
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub cmdline: String,
}

impl VmPlan {
    /// The core a rank of this VM runs on.
    pub fn core_of(&self, rank: u32) -> Option<u32> {
        self.ranks.iter().position(|r| *r == rank).map(|s| s as u32 % self.cpus)
    }
    /// Ranks sharing `core`.
    pub fn ranks_on_core(&self, core: u32) -> Vec<u32> {
        self.ranks.iter().enumerate().filter(|(s, _)| *s as u32 % self.cpus == core).map(|(_, r)| *r).collect()
    }
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub job_id: String,
    pub world: u32,
    pub map_by: MapBy,
    pub vms: Vec<VmPlan>,
}

/// Link-local, so it is never routed anywhere; VM k gets `IP_BASE + k`.
pub const IP_BASE: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const IP_PREFIX: u8 = 16;
/// Locally administered unicast; the last two bytes are the VM index.
pub const MAC_PREFIX: [u8; 4] = [0x02, 0x74, 0x6f, 0x00];
const MAX_VMS: u32 = 60_000;

impl Plan {
    pub fn new(input: &PlanInput) -> Result<Plan, String> {
        let np = input.np;
        if np < 1 {
            return Err("-np must be at least 1".into());
        }
        let vm_count = match (input.vms, input.ranks_per_vm) {
            (Some(_), Some(_)) => return Err("give --vms or --ranks-per-vm, not both".into()),
            (Some(0), _) => return Err("--vms must be at least 1".into()),
            (Some(v), _) if v > np => {
                return Err(format!("--vms {v} is more than the {np} ranks: every VM needs at least one rank"))
            }
            (Some(v), _) => v,
            (_, Some(0)) => return Err("--ranks-per-vm must be at least 1".into()),
            (_, Some(r)) => np.div_ceil(r),
            (None, None) => 1,
        };
        if vm_count > MAX_VMS {
            return Err(format!("{vm_count} VMs is more than this launcher addresses ({MAX_VMS})"));
        }
        if let Some(c) = input.cpus_per_vm {
            if c == 0 || c as usize > MAX_CPUS {
                return Err(format!("--cpus-per-vm must be between 1 and {MAX_CPUS}"));
            }
        }
        let ranks = match (input.map_by, input.ranks_per_vm) {
            // --ranks-per-vm R fills VMs R at a time, like mpirun's ppr mapping.
            (MapBy::Block, Some(r)) => (0..vm_count).map(|k| (k * r..((k + 1) * r).min(np)).collect()).collect(),
            _ => place(np, vm_count, input.map_by),
        };
        let mut vms = Vec::new();
        for (k, ranks) in ranks.into_iter().enumerate() {
            let n = ranks.len() as u32;
            if n as u64 > STACK_SLOTS {
                return Err(format!(
                    "VM {k} would hold {n} ranks but a VM runs at most {STACK_SLOTS} rank threads: use more --vms"
                ));
            }
            // By default the job's vCPUs fit the host's cores: each VM gets its share
            // (at least one). A vCPU more than the host has is a thread the host
            // preempts while the rank it runs is waited for (BENCHMARKS.md: 2 VMs x 2
            // ranks on 2 cores, barrier 794 us with 2 vCPUs per VM, 297 us with 1).
            let share = (input.host_cores.max(1) / vm_count).max(1);
            let cpus = input.cpus_per_vm.unwrap_or(share).min(n).min(MAX_CPUS as u32);
            let k = k as u32;
            vms.push(VmPlan {
                index: k,
                ranks,
                cpus,
                mem_mib: input.mem_mib,
                mac: [MAC_PREFIX[0], MAC_PREFIX[1], MAC_PREFIX[2], MAC_PREFIX[3], (k >> 8) as u8, k as u8],
                ip: Ipv4Addr::from(u32::from(IP_BASE) + k),
                cmdline: String::new(),
            });
        }
        let mut plan = Plan { job_id: input.job_id.clone(), world: np, map_by: input.map_by, vms };
        let place = plan.place_value();
        for k in 0..plan.vms.len() {
            let line = plan.cmdline(k, &place, input)?;
            // Room for the key `qemu_args` may add (q35 under TCG with vhost-user).
            let limit = CMDLINE_MAX - crate::qemu::POLL_NIC_KEY.len();
            if line.len() > limit {
                return Err(format!(
                    "the kernel command line of VM {k} would be {} bytes, more than {limit}: use --map-by block, fewer -x variables or shorter arguments",
                    line.len()
                ));
            }
            plan.vms[k].cmdline = line;
        }
        Ok(plan)
    }

    /// `(vm, core)` of a world rank.
    pub fn location(&self, rank: u32) -> Option<(u32, u32)> {
        self.vms.iter().find_map(|vm| vm.core_of(rank).map(|c| (vm.index, c)))
    }

    /// `place=` value: for each VM in order, `RANKS@CPUS`, joined by `/`.
    fn place_value(&self) -> String {
        let parts: Vec<String> = self.vms.iter().map(|vm| format!("{}@{}", rank_list(&vm.ranks), vm.cpus)).collect();
        parts.join("/")
    }

    fn cmdline(&self, k: usize, place: &str, input: &PlanInput) -> Result<String, String> {
        let vm = &self.vms[k];
        let mut s = String::new();
        write!(
            s,
            "cpus={} world={} ranks={} vm={} vms={} job={} place={}",
            vm.cpus,
            self.world,
            rank_list(&vm.ranks),
            vm.index,
            self.vms.len(),
            self.job_id,
            place
        )
        .unwrap();
        if let Some(ns) = input.spin_ns {
            write!(s, " spin={ns}").unwrap();
        }
        if self.vms.len() > 1 {
            write!(s, " mac={} ip={}/{IP_PREFIX} ipbase={IP_BASE}", vm.mac_string(), vm.ip).unwrap();
        }
        for (name, value) in &input.env {
            write!(s, " env.{name}={}", escape(value)).unwrap();
        }
        if !input.args.is_empty() {
            s.push_str(" --");
            for a in &input.args {
                if a.is_empty() {
                    return Err("an empty application argument cannot be passed on the kernel command line".into());
                }
                write!(s, " {}", escape(a)).unwrap();
            }
        }
        Ok(s)
    }
}

/// Which ranks each VM holds, ascending.
pub fn place(np: u32, vms: u32, map_by: MapBy) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); vms as usize];
    match map_by {
        MapBy::Block => {
            let (base, extra) = (np / vms, np % vms);
            let mut r = 0;
            for (k, v) in out.iter_mut().enumerate() {
                let n = base + u32::from((k as u32) < extra);
                v.extend(r..r + n);
                r += n;
            }
        }
        MapBy::Cyclic => {
            for r in 0..np {
                out[(r % vms) as usize].push(r);
            }
        }
    }
    out
}

/// `0-3,8,10-11` for an ascending list (the syntax of `toro_abi::cmdline::rank_list`).
pub fn rank_list(ranks: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        if !s.is_empty() {
            s.push(',');
        }
        if j > i {
            write!(s, "{}-{}", ranks[i], ranks[j]).unwrap();
        } else {
            write!(s, "{}", ranks[i]).unwrap();
        }
        i = j + 1;
    }
    s
}

/// Percent-encodes what `toro_abi::cmdline::needs_escape` asks for.
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if needs_escape(b) {
            write!(out, "%{b:02X}").unwrap();
        } else {
            out.push(b as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use toro_abi::cmdline::{percent_decode, rank_list as parse_ranks, Cmdline};

    fn input(np: u32) -> PlanInput {
        PlanInput {
            np,
            vms: None,
            ranks_per_vm: None,
            cpus_per_vm: None,
            map_by: MapBy::Block,
            host_cores: 2,
            mem_mib: 256,
            job_id: "j1".into(),
            spin_ns: None,
            env: vec![],
            args: vec![],
        }
    }

    #[test]
    fn block_and_cyclic() {
        assert_eq!(place(8, 2, MapBy::Block), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert_eq!(place(10, 4, MapBy::Block), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7], vec![8, 9]]);
        assert_eq!(place(8, 2, MapBy::Cyclic), vec![vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        assert_eq!(place(5, 3, MapBy::Cyclic), vec![vec![0, 3], vec![1, 4], vec![2]]);
        assert_eq!(place(1, 1, MapBy::Block), vec![vec![0]]);
    }

    #[test]
    fn every_rank_placed_once() {
        for np in 1..40 {
            for vms in 1..=np.min(9) {
                for m in [MapBy::Block, MapBy::Cyclic] {
                    let mut all: Vec<u32> = place(np, vms, m).concat();
                    all.sort();
                    assert_eq!(all, (0..np).collect::<Vec<_>>());
                    assert!(place(np, vms, m).iter().all(|v| !v.is_empty()));
                }
            }
        }
    }

    #[test]
    fn ranks_per_vm_and_cores() {
        let mut i = input(10);
        i.ranks_per_vm = Some(4);
        // 6 host cores for 3 VMs: 2 each.
        i.host_cores = 6;
        let p = Plan::new(&i).unwrap();
        let counts: Vec<usize> = p.vms.iter().map(|v| v.ranks.len()).collect();
        assert_eq!(counts, vec![4, 4, 2]);
        // 2 cores per VM: 4 ranks on 2 vCPUs, slots dealt round-robin to cores.
        assert_eq!(p.vms[0].cpus, 2);
        assert_eq!(p.location(0), Some((0, 0)));
        assert_eq!(p.location(1), Some((0, 1)));
        assert_eq!(p.location(2), Some((0, 0)));
        assert_eq!(p.location(9), Some((2, 1)));
        assert_eq!(p.location(10), None);
        assert_eq!(p.vms[0].ranks_on_core(0), vec![0, 2]);
        // Never more vCPUs than ranks, and the user may ask for more than the host has.
        i.cpus_per_vm = Some(8);
        let p = Plan::new(&i).unwrap();
        assert_eq!(p.vms.iter().map(|v| v.cpus).collect::<Vec<_>>(), vec![4, 4, 2]);
    }

    #[test]
    fn default_vcpus_fit_the_host_cores() {
        let cpus = |np: u32, vms: u32, host_cores: u32| {
            let mut i = input(np);
            i.vms = Some(vms);
            i.host_cores = host_cores;
            Plan::new(&i).unwrap().vms.iter().map(|v| v.cpus).collect::<Vec<_>>()
        };
        // One VM: min(ranks, cores), as before.
        assert_eq!(cpus(4, 1, 2), vec![2]);
        // 2 VMs x 2 ranks on 2 cores: one vCPU each, the ranks as threads on it.
        assert_eq!(cpus(4, 2, 2), vec![1, 1]);
        // More VMs than cores: still one each.
        assert_eq!(cpus(8, 4, 2), vec![1, 1, 1, 1]);
        // A large host: each VM its share, never more than its ranks.
        assert_eq!(cpus(32, 4, 64), vec![8, 8, 8, 8]);
        assert_eq!(cpus(64, 4, 32), vec![8, 8, 8, 8]);
        assert_eq!(cpus(6, 2, 5), vec![2, 2]);
    }

    #[test]
    fn impossible_plans() {
        let mut i = input(0);
        assert!(Plan::new(&i).unwrap_err().contains("at least 1"));
        i.np = 2;
        i.vms = Some(3);
        assert!(Plan::new(&i).unwrap_err().contains("every VM needs at least one rank"));
        i.ranks_per_vm = Some(1);
        assert!(Plan::new(&i).unwrap_err().contains("not both"));
        i.vms = None;
        i.ranks_per_vm = Some(0);
        assert!(Plan::new(&i).is_err());
        let mut i = input(200);
        assert!(Plan::new(&i).unwrap_err().contains("at most 128"));
        i.vms = Some(2);
        assert!(Plan::new(&i).is_ok());
        i.cpus_per_vm = Some(65);
        assert!(Plan::new(&i).is_err());
    }

    #[test]
    fn addresses() {
        let mut i = input(4);
        i.vms = Some(4);
        let p = Plan::new(&i).unwrap();
        assert_eq!(p.vms[0].ip, Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(p.vms[3].ip, Ipv4Addr::new(169, 254, 1, 4));
        assert_eq!(p.vms[3].mac_string(), "02:74:6f:00:00:03");
        let macs: std::collections::HashSet<_> = p.vms.iter().map(|v| v.mac).collect();
        assert_eq!(macs.len(), 4);
    }

    #[test]
    fn cmdline_round_trips_through_the_abi_parser() {
        let mut i = input(8);
        i.vms = Some(2);
        i.host_cores = 4;
        i.map_by = MapBy::Cyclic;
        i.spin_ns = Some(5000);
        i.env = vec![("GREETING".into(), "hello world%".into())];
        i.args = vec!["-v".into(), "a b".into()];
        let p = Plan::new(&i).unwrap();
        let line = &p.vms[1].cmdline;
        assert_eq!(
            line,
            "cpus=2 world=8 ranks=1,3,5,7 vm=1 vms=2 job=j1 place=0,2,4,6@2/1,3,5,7@2 spin=5000 \
             mac=02:74:6f:00:00:01 ip=169.254.1.2/16 ipbase=169.254.1.1 env.GREETING=hello%20world%25 -- -v a%20b"
        );
        let c = Cmdline::new(line);
        assert_eq!(c.get_u64("cpus"), Ok(Some(2)));
        assert_eq!(c.get_u64("world"), Ok(Some(8)));
        let ranks: Vec<u32> = parse_ranks(c.get("ranks").unwrap()).map(Result::unwrap).collect();
        assert_eq!(ranks, vec![1, 3, 5, 7]);
        for part in c.get("place").unwrap().split('/') {
            let (list, cpus) = part.split_once('@').unwrap();
            assert!(parse_ranks(list).all(|r| r.is_ok()));
            assert_eq!(cpus, "2");
        }
        let (name, value) = c.env().next().unwrap();
        let mut buf = [0u8; 64];
        let n = percent_decode(value, &mut buf).unwrap();
        assert_eq!((name, &buf[..n]), ("GREETING", &b"hello world%"[..]));
        let args: Vec<&str> = c.app_args().collect();
        assert_eq!(args, vec!["-v", "a%20b"]);
        // One VM: no network keys.
        let p = Plan::new(&input(4)).unwrap();
        assert_eq!(p.vms[0].cmdline, "cpus=2 world=4 ranks=0-3 vm=0 vms=1 job=j1 place=0-3@2");
    }

    #[test]
    fn cmdline_limits() {
        let mut i = input(1);
        i.args = vec![String::new()];
        assert!(Plan::new(&i).unwrap_err().contains("empty"));
        let mut i = input(4000);
        i.vms = Some(40);
        i.map_by = MapBy::Cyclic;
        assert!(Plan::new(&i).unwrap_err().contains("command line"));
        i.map_by = MapBy::Block;
        assert!(Plan::new(&i).is_ok());
    }

    #[test]
    fn rank_lists() {
        assert_eq!(rank_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(rank_list(&[5]), "5");
        assert_eq!(rank_list(&[0, 2, 4]), "0,2,4");
    }
}
