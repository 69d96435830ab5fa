//! Camera controls through the running agent's [`Media`] handle: the library API behind the
//! control plane's `controls` and `set {"controls": …}` commands.
//!
//! The camera is opened a second time for this (V4L2 allows it while another handle streams),
//! so reading or setting a control never disturbs the pipeline. A value set here lasts until the
//! camera is reopened (after an unplug, say), when `[source.controls]` is applied again.

use super::v4l2::controls::{self, ControlInfo};
use super::{Media, MediaError};
use crate::config::ControlSetting;
use std::path::PathBuf;

impl Media {
    /// The V4L2 node of the camera in use, if the source is one.
    fn control_node(&self) -> Result<PathBuf, MediaError> {
        self.info()
            .borrow()
            .device
            .clone()
            .ok_or(MediaError::NoControls)
    }

    /// Every control of the camera in use, with current values.
    pub fn camera_controls(&self) -> Result<Vec<ControlInfo>, MediaError> {
        let path = self.control_node()?;
        let dev = controls::open(&path)?;
        Ok(controls::list(&dev, &path)?)
    }

    /// Sets one control by name and returns it as the driver now reports it.
    pub fn set_camera_control(
        &self,
        name: &str,
        value: &ControlSetting,
    ) -> Result<ControlInfo, MediaError> {
        let path = self.control_node()?;
        let dev = controls::open(&path)?;
        Ok(controls::set(&dev, &path, name, value)?)
    }
}
