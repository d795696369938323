//! Readings of processes from `/proc`: CPU time (user + system) and RSS of
//! the worker, the sandbox, the broker (`beam.smp`) and the bench itself.
//! CPU time is what makes figures comparable on a noisy machine, where
//! steps/s are not.

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0 // what Linux reports everywhere, should sysconf fail
    }
}

/// User + system CPU time of process `pid` (all its threads), in clock
/// ticks; `None` when the process is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count
    // fields after its closing one. utime and stime are fields 14 and 15, so
    // the 12th and 13th after field 2.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The broker's processes on this machine: every process whose command name
/// is `beam.smp` (RabbitMQ's Erlang VM). Empty when the broker runs elsewhere.
pub fn broker_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "beam.smp")
        })
        .collect()
}

/// Summed CPU ticks of `pids`; `None` if there are none or one is gone.
pub fn cpu_ticks_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_ticks(*pid)).sum()
}

/// Resident set size of process `pid` in MB (0 when it cannot be read).
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// The processes whose CPU a throughput run charges to its steps.
pub struct Watched {
    pub worker: u32,
    pub sandbox: u32,
    pub broker: Vec<u32>,
    pub bench: u32,
}

/// CPU ticks of the watched processes at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    worker: Option<u64>,
    sandbox: Option<u64>,
    broker: Option<u64>,
    bench: Option<u64>,
}

/// CPU milliseconds per step of each watched process over a run; `None`
/// where a process could not be read (a broker elsewhere, say).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPerStep {
    pub worker: Option<f64>,
    pub sandbox: Option<f64>,
    pub broker: Option<f64>,
    pub bench: Option<f64>,
}

impl Watched {
    /// Watches `worker` and `sandbox`, this process, and the broker's
    /// processes found now (saying so when there are several, or none).
    pub fn new(worker: u32, sandbox: u32) -> Watched {
        let broker = broker_pids();
        match broker.len() {
            0 => eprintln!(
                "      (no beam.smp process on this machine: the broker's CPU is not measured)"
            ),
            1 => {}
            n => eprintln!("      ({n} beam.smp processes: the broker's CPU is their sum)"),
        }
        Watched {
            worker,
            sandbox,
            broker,
            bench: std::process::id(),
        }
    }

    pub fn sample(&self) -> CpuSample {
        CpuSample {
            worker: cpu_ticks(self.worker),
            sandbox: cpu_ticks(self.sandbox),
            broker: cpu_ticks_of(&self.broker),
            bench: cpu_ticks(self.bench),
        }
    }
}

/// CPU milliseconds per step from `ticks` spent on `steps` steps.
pub fn ms_per_step(ticks: u64, steps: usize) -> f64 {
    ticks as f64 * 1000.0 / clock_ticks_per_s() / steps as f64
}

impl CpuSample {
    /// What each process spent per step between `self` and the later `after`.
    pub fn per_step_until(&self, after: &CpuSample, steps: usize) -> CpuPerStep {
        let per = |a: Option<u64>, b: Option<u64>| Some(ms_per_step(b?.checked_sub(a?)?, steps));
        CpuPerStep {
            worker: per(self.worker, after.worker),
            sandbox: per(self.sandbox, after.sandbox),
            broker: per(self.broker, after.broker),
            bench: per(self.bench, after.bench),
        }
    }
}
