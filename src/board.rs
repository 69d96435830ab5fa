//! What the board reports about itself, read where Linux publishes it: the SoC temperature.
//! A leaf: telemetry and `/metrics` both read it.

/// The SoC temperature in °C, to a tenth: the first thermal zone (on Raspberry Pi and most
/// boards, the CPU). `None` where the kernel has no thermal zone (containers, some VMs).
pub fn soc_temperature() -> Option<f64> {
    let milli: f64 = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((milli / 1000.0 * 10.0).round() / 10.0)
}
