//! Sizes in human units, the one formatting every program of the system
//! uses (the peer's menu, `peer find`, progress lines and `p2p-admin`), so
//! a file reads the same size everywhere. Pure: no I/O. It must not be used
//! where a script reads the number (JSON, CSV, the wire): those keep bytes.

/// Binary units above bytes, in order.
const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
/// A value that would round up to 1024 of a unit is shown in the next one
/// (`1.0 MiB`, never `1024.0 KiB`).
pub fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 prints as "1024.0": move up before that.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The `s` of a counted noun: `format!("{n} file{}", plural(n))` gives
/// "1 file", "2 files", "0 files".
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_size(1_500_000_000_000), "1.4 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }
}
