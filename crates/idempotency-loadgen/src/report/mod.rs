//! The outputs: `report.json` (machine-readable), `report.md` (tables, ratios against the
//! same-run baselines, targets) and `latency.svg`.

mod data;
mod markdown;
mod svg;

use std::path::Path;

use anyhow::{Context as _, Result};

pub(crate) use data::{
    DuplicateCheck, PeerFigures, Report, RoundRatios, Row, ServerVersions, human_rate, human_us,
    round_ratios,
};

impl Report {
    /// Write the three files into `dir` (created if needed).
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        write(dir, "report.json", &json)?;
        write(dir, "report.md", &markdown::render(self))?;
        write(dir, "latency.svg", &svg::render(self))?;
        Ok(())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}
