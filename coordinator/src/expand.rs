//! `SweepSpec` expanded into the ordered list of images to render; pure, no I/O.
