//! Latency stamp, a benchmark aid: the test pattern carries its capture time as a barcode in
//! the luma plane, so a viewer that decodes the picture can tell how old it is (glass-to-glass
//! latency) without any side channel. Off unless `RTCAM_BENCH_STAMP=1` is set in rtcam's
//! environment; only the test source ever gets it, never a camera.
//!
//! The code is a row of `BITS` blocks, each `BLOCK_W`×`BLOCK_H` pixels of black or white luma in
//! the top-left corner. Blocks this large survive H.264 at low bitrates; the checksum rejects a
//! frame whose code the encoder smeared (rare, and then that frame is simply not counted).
//!
//! Pure functions on a plane and its stride, so they are tested here and shared with the
//! benchmark viewer; the GStreamer probe that calls them lives in `media/live.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that turns the stamp on (`1`).
pub const ENV: &str = "RTCAM_BENCH_STAMP";
/// 40 bits of milliseconds (wraps every 34 years, compared modulo) and an 8-bit checksum.
const MS_BITS: u32 = 40;
const BITS: usize = 48;
const BLOCK_W: usize = 24;
const BLOCK_H: usize = 32;
/// Video-range black and white: what every decoder and converter keeps unchanged.
const BLACK: u8 = 16;
const WHITE: u8 = 235;
const MS_MASK: u64 = (1 << MS_BITS) - 1;

/// Whether rtcam was started with the stamp on.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

/// Width and height a picture needs for the code to fit.
pub fn fits(width: usize, height: usize) -> bool {
    width >= BITS * BLOCK_W && height >= BLOCK_H
}

/// Milliseconds since the Unix epoch, truncated to what the code carries.
pub fn now_ms() -> u64 {
    // A clock before 1970 is a broken clock; 0 then only makes that run's figures nonsense.
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ms & MS_MASK
}

/// How many milliseconds after `stamped` the time `now` is, both as `now_ms` gives them.
pub fn age_ms(stamped: u64, now: u64) -> i64 {
    // Modulo 2^40: right across a wrap, and a small negative stays negative (clock skew shows).
    let d = now.wrapping_sub(stamped) & MS_MASK;
    if d > MS_MASK / 2 {
        d as i64 - (MS_MASK as i64 + 1)
    } else {
        d as i64
    }
}

fn checksum(ms: u64) -> u64 {
    // XOR of the five bytes, offset so an all-black or all-white strip is never valid.
    (0..5).fold(0x5a, |acc, i| acc ^ ((ms >> (8 * i)) & 0xff))
}

fn word(ms: u64) -> u64 {
    let ms = ms & MS_MASK;
    ms | (checksum(ms) << MS_BITS)
}

/// Writes `ms` into a luma plane. Does nothing if the plane is too small (the caller checks
/// `fits` once; this keeps a bad stride from ever writing out of bounds).
pub fn write(plane: &mut [u8], stride: usize, width: usize, height: usize, ms: u64) {
    if !fits(width, height) || stride < width || plane.len() < stride * (BLOCK_H - 1) + width {
        return;
    }
    let w = word(ms);
    for row in 0..BLOCK_H {
        let line = &mut plane[row * stride..row * stride + BITS * BLOCK_W];
        for bit in 0..BITS {
            let v = if (w >> (BITS - 1 - bit)) & 1 == 1 {
                WHITE
            } else {
                BLACK
            };
            line[bit * BLOCK_W..(bit + 1) * BLOCK_W].fill(v);
        }
    }
}

/// Reads the time back from a decoded luma plane; `None` if there is no valid code.
pub fn read(plane: &[u8], stride: usize, width: usize, height: usize) -> Option<u64> {
    if !fits(width, height) || stride < width || plane.len() < stride * BLOCK_H {
        return None;
    }
    let mut w = 0u64;
    for bit in 0..BITS {
        // The mean of each block's inner part: its edges are where compression blurs.
        let mut sum = 0u32;
        let mut n = 0u32;
        for row in BLOCK_H / 4..BLOCK_H * 3 / 4 {
            let start = row * stride + bit * BLOCK_W + BLOCK_W / 4;
            for &p in &plane[start..start + BLOCK_W / 2] {
                sum += u32::from(p);
                n += 1;
            }
        }
        let one = sum / n.max(1) > u32::from(BLACK / 2 + WHITE / 2);
        w = (w << 1) | u64::from(one);
    }
    let ms = w & MS_MASK;
    (w >> MS_BITS == checksum(ms)).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let (w, h, stride) = (1280, 720, 1280);
        let mut plane = vec![128u8; stride * h];
        for ms in [0, 1, 1_790_000_123_456 & MS_MASK, MS_MASK] {
            write(&mut plane, stride, w, h, ms);
            assert_eq!(read(&plane, stride, w, h), Some(ms));
        }
    }

    #[test]
    fn survives_noise_and_rejects_garbage() {
        let (w, h, stride) = (1280, 64, 1344);
        let mut plane = vec![0u8; stride * h];
        write(&mut plane, stride, w, h, 123_456_789);
        for (i, p) in plane.iter_mut().enumerate() {
            *p = p.saturating_add((i % 7) as u8 * 5).saturating_sub(15);
        }
        assert_eq!(read(&plane, stride, w, h), Some(123_456_789));
        assert_eq!(read(&vec![16u8; stride * h], stride, w, h), None);
        assert_eq!(read(&vec![235u8; stride * h], stride, w, h), None);
        // Too small a picture or plane: no code, no panic.
        assert_eq!(read(&plane[..100], stride, w, h), None);
        assert_eq!(read(&plane, stride, 320, 240), None);
        write(&mut plane[..100], stride, w, h, 1);
    }

    #[test]
    fn age_across_wrap() {
        assert_eq!(age_ms(10, 25), 15);
        assert_eq!(age_ms(MS_MASK - 4, 5), 10);
        assert_eq!(age_ms(25, 10), -15);
    }
}
