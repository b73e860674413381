//! The kernel command line (`-append`): `key=value` words, then optionally
//! `--` and the application's arguments. Words are separated by spaces;
//! a value or argument that needs a space, `%` or a non-ASCII byte carries
//! it percent-encoded (`%20`). The launcher writes it, ring 0 and ring 3 read it.
//!
//! Keys understood by Toro (others are left to the application):
//! - `cpus=N`     vCPUs to expect when the machine has no MADT
//! - `ranks=L`    the world ranks that live in this VM, in core order: `0-3`, `4,6,8`
//! - `world=N`    world size;  `vm=K` / `vms=M`  this VM's index and the VM count
//! - `job=ID`     job id;  `spin=NS`  idle spin budget before halting, in ns
//! - `pretouch=MIB` heap touched per core at boot (the rest when idle); `verbose`
//! - `place=`, `mac=`, `ip=`, `ipbase=`: the job plan (see launcher/README.md)
//! - `env.NAME=V` environment for the application (`-x NAME=V`)

const QEMU_VIRTIO_MMIO_HINT: &str = "virtio_mmio.device=";

/// A parsed view of a command line; borrows the text.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    pub fn new(text: &'a str) -> Self {
        Cmdline { text: text.trim_end_matches('\0') }
    }

    fn options(&self) -> impl Iterator<Item = &'a str> {
        self.text.split_ascii_whitespace().take_while(|w| *w != "--")
    }

    /// The raw value of `key=value`; the last occurrence wins.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.options()
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }

    /// A switch: `name` alone or `name=V` with V other than `0`.
    pub fn flag(&self, name: &str) -> bool {
        self.options().any(|w| w == name) || self.get(name).is_some_and(|v| v != "0")
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, CmdlineError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_u64(v).map(Some).ok_or(CmdlineError::BadNumber),
        }
    }

    /// `env.NAME=VALUE` words, value still percent-encoded.
    pub fn env(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.options()
            .filter_map(|w| w.strip_prefix("env."))
            .filter_map(|w| w.split_once('='))
    }

    /// Application arguments (after `--`), each still percent-encoded.
    /// QEMU appends `virtio_mmio.device=` hints for a microvm without ACPI
    /// to the end of the line; they are not the application's.
    pub fn app_args(&self) -> impl Iterator<Item = &'a str> {
        self.text
            .split_ascii_whitespace()
            .skip_while(|w| *w != "--")
            .skip(1)
            .filter(|w| !w.starts_with(QEMU_VIRTIO_MMIO_HINT))
    }

    /// The interrupt (IOAPIC input) of the virtio-mmio transport at `address`,
    /// from the `virtio_mmio.device=SIZE@ADDRESS:IRQ` hints QEMU appends for a
    /// microvm without ACPI (anywhere on the line).
    pub fn virtio_mmio_irq(&self, address: u64) -> Option<u32> {
        self.text.split_ascii_whitespace().filter_map(|w| w.strip_prefix(QEMU_VIRTIO_MMIO_HINT)).find_map(|hint| {
            let (_, place) = hint.split_once('@')?;
            let (at, irq) = place.split_once(':')?;
            (parse_u64(at)? == address).then_some(())?;
            irq.parse().ok()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    BadNumber,
    BadRankList,
    BadEscape,
    TooLong,
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CmdlineError::BadNumber => "not a number",
            CmdlineError::BadRankList => "bad rank list (want e.g. 0-3 or 0,2,4)",
            CmdlineError::BadEscape => "bad %-escape",
            CmdlineError::TooLong => "too long",
        })
    }
}

pub fn parse_u64(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Iterates a rank list such as `0-3,8,10-11`. Every item is checked.
pub fn rank_list(s: &str) -> impl Iterator<Item = Result<u32, CmdlineError>> + '_ {
    s.split(',').flat_map(|part| {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|a| (a, a)),
        };
        let (ok, a, b) = match range {
            Some((a, b)) if a <= b => (true, a, b),
            _ => (false, 1, 0),
        };
        let bad = (!ok).then_some(Err(CmdlineError::BadRankList));
        bad.into_iter().chain((a..=b).map(Ok))
    })
}

/// Decodes `%XX` escapes into `out`; returns the decoded length.
pub fn percent_decode(s: &str, out: &mut [u8]) -> Result<usize, CmdlineError> {
    let bytes = s.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        let b = if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(CmdlineError::BadEscape)?;
            i += 3;
            u8::from_str_radix(hex, 16).map_err(|_| CmdlineError::BadEscape)?
        } else {
            i += 1;
            bytes[i - 1]
        };
        *out.get_mut(n).ok_or(CmdlineError::TooLong)? = b;
        n += 1;
    }
    Ok(n)
}

/// Whether a byte must be escaped in a command-line word.
pub fn needs_escape(b: u8) -> bool {
    !(0x21..0x7f).contains(&b) || b == b'%' || b == b'"'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_args() {
        let c = Cmdline::new("cpus=4 world=8 ranks=0-3 env.OMP=1 -- a%20b c\0");
        assert_eq!(c.get("cpus"), Some("4"));
        assert_eq!(c.get_u64("world"), Ok(Some(8)));
        assert_eq!(c.get("nope"), None);
        assert!(Cmdline::new("a b=1 c=0").flag("a") && Cmdline::new("b=1").flag("b"));
        assert!(!Cmdline::new("c=0 d").flag("c") && !Cmdline::new("-- a").flag("a"));
        assert_eq!(c.get_u64("ranks"), Err(CmdlineError::BadNumber));
        assert_eq!(c.env().collect::<Vec<_>>(), vec![("OMP", "1")]);
        assert_eq!(c.app_args().collect::<Vec<_>>(), vec!["a%20b", "c"]);
        // Words after `--` are never options.
        let c = Cmdline::new("x=1 -- x=2");
        assert_eq!(c.get("x"), Some("1"));
        assert_eq!(Cmdline::new("").app_args().count(), 0);
        let c = Cmdline::new("cpus=1 -- a b virtio_mmio.device=512@0xfeb00e00:12");
        assert_eq!(c.app_args().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn virtio_mmio_interrupts() {
        let c = Cmdline::new("cpus=1 -- a virtio_mmio.device=512@0xfeb00c00:11 virtio_mmio.device=512@0xfeb00e00:12");
        assert_eq!(c.virtio_mmio_irq(0xfeb0_0e00), Some(12));
        assert_eq!(c.virtio_mmio_irq(0xfeb0_0c00), Some(11));
        assert_eq!(c.virtio_mmio_irq(0xfeb0_0a00), None);
        assert_eq!(Cmdline::new("virtio_mmio.device=512@0xfeb00e00").virtio_mmio_irq(0xfeb0_0e00), None);
    }

    #[test]
    fn last_value_wins_and_hex() {
        let c = Cmdline::new("spin=1 spin=0x10");
        assert_eq!(c.get_u64("spin"), Ok(Some(16)));
    }

    #[test]
    fn rank_lists() {
        let v: Result<Vec<u32>, _> = rank_list("0-3,8,10-11").collect();
        assert_eq!(v.unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert!(rank_list("3-1").any(|r| r.is_err()));
        assert!(rank_list("a").any(|r| r.is_err()));
        assert!(rank_list("").any(|r| r.is_err()));
        assert!(rank_list("1,,2").any(|r| r.is_err()));
    }

    #[test]
    fn percent() {
        let mut buf = [0u8; 16];
        let n = percent_decode("a%20b%25", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"a b%");
        assert_eq!(percent_decode("%2", &mut buf), Err(CmdlineError::BadEscape));
        assert_eq!(percent_decode("%zz", &mut buf), Err(CmdlineError::BadEscape));
        assert_eq!(percent_decode("abc", &mut buf[..2]), Err(CmdlineError::TooLong));
        assert!(needs_escape(b' ') && needs_escape(b'%') && !needs_escape(b'a'));
    }
}
