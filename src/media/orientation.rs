//! `[source] rotation`, `hflip`, `vflip`: who turns the picture, the camera or the pipeline
//! (pure; `capture.rs` applies the plan to a camera, `describe.rs` to the pipeline).
//!
//! The user's orientation is "mirror, then turn clockwise". A camera with V4L2 flip controls
//! mirrors for free, and mirroring both ways is a 180° turn, so such a camera does every
//! orientation but 90° and 270°; those, and everything on a camera without flip controls, are
//! one `videoflip` in the pipeline, which costs CPU on every frame.

use crate::config::{Rotation, SourceConfig};

/// The orientation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Orientation {
    pub rotation: Rotation,
    pub hflip: bool,
    pub vflip: bool,
}

impl Orientation {
    pub fn of(source: &SourceConfig) -> Orientation {
        Orientation {
            rotation: source.rotation,
            hflip: source.hflip,
            vflip: source.vflip,
        }
    }

    /// Whether width and height trade places.
    pub fn swaps_sides(self) -> bool {
        matches!(self.rotation, Rotation::R90 | Rotation::R270)
    }
}

/// One of the eight ways to lay a picture down: `videoflip`'s `video-direction` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Identity = 0,
    Clockwise = 1,
    Half = 2,
    CounterClockwise = 3,
    Horizontal = 4,
    Vertical = 5,
    /// Mirrored across the upper-left/lower-right diagonal.
    Transpose = 6,
    /// Mirrored across the upper-right/lower-left diagonal.
    OtherDiagonal = 7,
}

/// Where a pixel at (x, y) from the centre (y down) goes: a 2×2 matrix, row-major.
type Matrix = [i8; 4];

impl Turn {
    const ALL: [Turn; 8] = [
        Turn::Identity,
        Turn::Clockwise,
        Turn::Half,
        Turn::CounterClockwise,
        Turn::Horizontal,
        Turn::Vertical,
        Turn::Transpose,
        Turn::OtherDiagonal,
    ];

    fn matrix(self) -> Matrix {
        match self {
            Turn::Identity => [1, 0, 0, 1],
            // Right (1,0) goes down (0,1): (x,y) → (−y,x).
            Turn::Clockwise => [0, -1, 1, 0],
            Turn::Half => [-1, 0, 0, -1],
            Turn::CounterClockwise => [0, 1, -1, 0],
            Turn::Horizontal => [-1, 0, 0, 1],
            Turn::Vertical => [1, 0, 0, -1],
            Turn::Transpose => [0, 1, 1, 0],
            Turn::OtherDiagonal => [0, -1, -1, 0],
        }
    }

    /// `after` applied to the result of `self`.
    fn then(self, after: Turn) -> Turn {
        let (a, b) = (after.matrix(), self.matrix());
        let m = [
            a[0] * b[0] + a[1] * b[2],
            a[0] * b[1] + a[1] * b[3],
            a[2] * b[0] + a[3] * b[2],
            a[2] * b[1] + a[3] * b[3],
        ];
        *Turn::ALL
            .iter()
            .find(|t| t.matrix() == m)
            .expect("the eight turns are closed under composition")
    }

    /// Whether width and height trade places.
    pub fn swaps_sides(self) -> bool {
        matches!(
            self,
            Turn::Clockwise | Turn::CounterClockwise | Turn::Transpose | Turn::OtherDiagonal
        )
    }

    fn of_rotation(r: Rotation) -> Turn {
        match r {
            Rotation::R0 => Turn::Identity,
            Rotation::R90 => Turn::Clockwise,
            Rotation::R180 => Turn::Half,
            Rotation::R270 => Turn::CounterClockwise,
        }
    }
}

/// Who does what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Values for the camera's `horizontal_flip` and `vertical_flip` controls, when it has them.
    pub camera_flips: Option<(bool, bool)>,
    /// What `videoflip` does in the pipeline; `Identity` means no element.
    pub pipeline: Turn,
}

/// The plan for `o` on a camera that has both V4L2 flip controls (`camera_flips`) or not.
pub fn plan(o: Orientation, camera_flips: bool) -> Plan {
    if camera_flips {
        // 180° is a mirror both ways, which the camera does; 90° and 270° need the pipeline.
        let half = o.rotation == Rotation::R180;
        let rest = if half { Rotation::R0 } else { o.rotation };
        return Plan {
            camera_flips: Some((o.hflip ^ half, o.vflip ^ half)),
            pipeline: Turn::of_rotation(rest),
        };
    }
    let mut turn = Turn::Identity;
    if o.hflip {
        turn = turn.then(Turn::Horizontal);
    }
    if o.vflip {
        turn = turn.then(Turn::Vertical);
    }
    Plan {
        camera_flips: None,
        pipeline: turn.then(Turn::of_rotation(o.rotation)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(degrees: u64, hflip: bool, vflip: bool) -> Orientation {
        Orientation {
            rotation: Rotation::from_degrees(degrees).unwrap(),
            hflip,
            vflip,
        }
    }

    #[test]
    fn a_camera_with_flip_controls_does_everything_but_quarter_turns() {
        let p = plan(o(180, false, false), true);
        assert_eq!(p.camera_flips, Some((true, true)));
        assert_eq!(p.pipeline, Turn::Identity);
        // Mirrored, then half a turn: only the vertical mirror is left.
        assert_eq!(
            plan(o(180, true, false), true).camera_flips,
            Some((false, true))
        );
        let p = plan(o(90, true, false), true);
        assert_eq!(p.camera_flips, Some((true, false)));
        assert_eq!(p.pipeline, Turn::Clockwise);
        // The default writes both controls off, so a change at run time can undo a flip.
        assert_eq!(
            plan(o(0, false, false), true).camera_flips,
            Some((false, false))
        );
    }

    #[test]
    fn without_flip_controls_one_videoflip_does_it_all() {
        assert_eq!(plan(o(0, false, false), false).pipeline, Turn::Identity);
        assert_eq!(plan(o(180, false, false), false).pipeline, Turn::Half);
        assert_eq!(plan(o(0, true, true), false).pipeline, Turn::Half);
        assert_eq!(plan(o(180, true, true), false).pipeline, Turn::Identity);
        assert_eq!(
            plan(o(270, false, false), false).pipeline,
            Turn::CounterClockwise
        );
        // Mirror left-right, then turn clockwise: (x,y) → (−x,y) → (−y,−x), a mirror across
        // the upper-right/lower-left diagonal.
        assert_eq!(
            plan(o(90, true, false), false).pipeline,
            Turn::OtherDiagonal
        );
        assert_eq!(plan(o(90, false, true), false).pipeline, Turn::Transpose);
        assert!(o(270, false, false).swaps_sides() && !o(180, true, true).swaps_sides());
    }
}
