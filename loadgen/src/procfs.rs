//! What the bench reads from Linux `/proc`: a process's CPU time (all its
//! threads) and peak resident set size, and how busy the whole machine was.

use std::time::Duration;

/// Kernel clock ticks per second in `/proc` (`USER_HZ`): 100 on every Linux
/// architecture's user-visible interface.
const USER_HZ: u64 = 100;

/// A `/proc` file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unexpected format of {0}")]
    Format(String),
}

fn read(path: String) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// User plus system CPU time of process `pid` so far, all threads
/// (`/proc/<pid>/stat` fields 14 and 15; 10 ms resolution).
pub(crate) fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let path = format!("/proc/{pid}/stat");
    parse_cpu_time(&read(path.clone())?).ok_or(ProcError::Format(path))
}

fn parse_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) may contain spaces and parentheses: fields
    // are counted from after its closing parenthesis, where field 3 begins.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Peak resident set size of process `pid` (`VmHWM`), bytes.
pub(crate) fn peak_rss(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    parse_vm_hwm(&read(path.clone())?).ok_or(ProcError::Format(path))
}

/// Resident set size of a process now (`VmRSS`), bytes.
pub(crate) fn rss(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    parse_status_kib(&read(path.clone())?, "VmRSS:").ok_or(ProcError::Format(path))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some(kib * 1024)
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, all
/// cores), in ticks: their deltas give how busy the machine was in between.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineTicks {
    busy: u64,
    total: u64,
}

impl MachineTicks {
    pub(crate) fn now() -> Result<Self, ProcError> {
        let path = "/proc/stat".to_owned();
        parse_machine(&read(path.clone())?).ok_or(ProcError::Format(path))
    }

    /// Share of all cores busy between `earlier` and `self`, 0.0 to 1.0.
    pub(crate) fn busy_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 { 0.0 } else { self.busy.saturating_sub(earlier.busy) as f64 / total as f64 }
    }

    /// CPU time spent by the whole machine between `earlier` and `self`.
    pub(crate) fn busy_time_since(&self, earlier: &Self) -> Duration {
        Duration::from_millis(self.busy.saturating_sub(earlier.busy) * 1000 / USER_HZ)
    }
}

/// The process listening on TCP `port` on this machine, if it can be found:
/// the listening socket's inode from `/proc/net/tcp{,6}`, then the process
/// holding it among `/proc/*/fd`.
pub(crate) fn listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .any(|link| wanted.iter().any(|w| link.as_os_str() == w.as_str()))
            .then_some(pid)
    })
}

/// Inodes of the sockets listening on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN).then(|| fields.get(9)?.parse().ok())?
        })
        .collect()
}

fn parse_machine(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    Some(MachineTicks { busy: total - idle, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_skips_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 9 0 1234 5678";
        assert_eq!(parse_cpu_time(stat), Some(Duration::from_millis(3800)));
        assert_eq!(parse_cpu_time("garbage"), None);
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status = "Name:\tgateway\nVmPeak:\t  900 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(20480 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn machine_busy_share() {
        let a = parse_machine("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse_machine("cpu  200 0 200 800 100 0 0 0 0 0\n").unwrap();
        assert!((b.busy_since(&a) - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(peak_rss(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
        assert!(MachineTicks::now().is_ok());
    }

    #[test]
    fn finds_listening_sockets_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 23313 1 0000
   1: 0100007F:1628 0100007F:C350 01 00000000:00000000 00:00000000 00000000   107        0 99999 1 0000
   2: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23999 1 0000";
        assert_eq!(listening_inodes(table, 5672), vec![23313]);
        assert_eq!(listening_inodes(table, 1), Vec::<u64>::new());
    }

    #[test]
    fn finds_its_own_listener() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(listener(port), Some(std::process::id()));
    }
}
