//! Which process wrote a lease owner, and whether it still runs: an SQLite
//! ledger's workers share one host, so `/proc` tells.

/// `host:<name>:pidns:<inode>:pid:<pid>:<start time>`: this process,
/// findable in `/proc` from the same host and pid namespace.
pub(super) fn this_worker_id() -> String {
    let pid = std::process::id();
    format!(
        "host:{}:pidns:{}:pid:{pid}:{}",
        host_name(),
        pid_namespace(),
        process_start(pid).unwrap_or(0)
    )
}

/// Whether the process named in a lease owner written by an SQLite ledger
/// still runs (see [`holder_alive_on`]).
pub(super) fn holder_alive(owner: &str) -> bool {
    holder_alive_on(owner, &host_name(), &pid_namespace())
}

/// This host's name, as the kernel has it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`): pids are
/// only comparable within one (containers sharing a host name may not share it).
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| {
            p.to_string_lossy()
                .trim_start_matches("pid:")
                .trim_matches(['[', ']'])
                .to_string()
        })
        .unwrap_or_default()
}

/// The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`)
/// of a running process: with its pid, it names the process even when the
/// pid is reused. `None` when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ...": the name may hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named in a lease owner written by [`super::SqliteLedger`]
/// still runs; `true` whenever it cannot be told: another host or pid
/// namespace, an owner of another form, or a `/proc` that hides other
/// processes (`hidepid`: then even pid 1 is not to be seen).
fn holder_alive_on(owner: &str, this_host: &str, this_pidns: &str) -> bool {
    let id = owner.split('/').next().unwrap_or_default();
    let parts: Vec<&str> = id.split(':').collect();
    let ["host", host, "pidns", pidns, "pid", pid, start] = parts.as_slice() else {
        return true;
    };
    if *host != this_host || *pidns != this_pidns || process_start(1).is_none() {
        return true;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return true;
    };
    process_start(pid) == Some(start)
}
