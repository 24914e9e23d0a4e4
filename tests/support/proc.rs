//! Readings of `/proc`: a process's state, parent, CPU times and memory; the machine's CPU.

/// The command name and the fields of `/proc/<pid>/stat` after it (state, ppid, pgrp, …,
/// utime at index 11); `None` once the process is gone.
pub fn stat(pid: &str) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields = stat[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((comm, fields))
}

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …); `None` once the process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(&pid.to_string()).is_some_and(|(_, f)| f.get(1) == Some(&parent)))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat(&pid.to_string()).is_some_and(|(_, f)| f.first().is_some_and(|s| s != "Z"))
}
