//! Entry points for the fuzz targets in `fuzz/` (not a stable API).
