//! Uploader (to be written).
