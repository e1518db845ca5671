//! Facts about this process (resident memory) read from /proc.

/// Resident set size of this process in bytes, or 0 where /proc is missing.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident set size of process `pid` ("self" for this one), or 0.
pub fn rss_of(pid: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_rss_is_nonzero_on_linux() {
        assert!(super::rss_bytes() > 1024 * 1024);
    }
}
