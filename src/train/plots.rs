//! PNG plots of a run, redrawn from its `metrics.jsonl` after every evaluation and at the end of training, so
//! they sit beside the checkpoints: `loss.png` (each task's training loss per step, thin, and validation loss
//! per evaluation, with markers), `coba_weights.png` (each task's share of the loss weights, drawn only when the
//! shares move, i.e. under CoBa; fixed weights would be flat lines) and `lr.png` (the learning rate).
//!
//! plotters draws into an RGB buffer with its pure-Rust rasterizer and a font embedded in the binary (a subset of
//! DejaVu Sans, `assets/fonts/`), so nothing needs fontconfig or a system font. The `png` crate encodes the
//! buffer and the file is replaced atomically. A plot is a by-product: when one fails the trainer logs a
//! warning and trains on.

use crate::io::write_atomic;
use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const LOSS_PNG: &str = "loss.png";
pub const WEIGHTS_PNG: &str = "coba_weights.png";
pub const LR_PNG: &str = "lr.png";
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// One colour per task (Tableau 10), cycling after ten tasks.
pub const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

// ANCHOR: records
/// What the plots show, read back from `metrics.jsonl`: per task (in `tasks` order) a list of (step, value).
#[derive(Debug, Default)]
pub struct Records {
    pub tasks: Vec<String>,
    pub train_loss: Vec<Vec<(f64, f64)>>,
    pub valid_loss: Vec<Vec<(f64, f64)>>,
    /// Each task's share of the step's loss weights, w_k / Σ_j w_j: case3 (and CoBa) use only the ratios, and
    /// CoBa's weights are 1 during its warm-up but sum to 1 after it.
    pub weights: Vec<Vec<(f64, f64)>>,
    pub lr: Vec<(f64, f64)>,
}
// ANCHOR_END: records

impl Records {
    /// A training line has `lr`, `task_loss` and `task_weights` (objects keyed by task name), an evaluation line
    /// `eval_task_loss`. Lines that do not parse (a line torn by a crash) and non-finite values are skipped.
    pub fn parse(text: &str) -> Records {
        let mut records = Records::default();
        for line in text.lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(step) = value["step"].as_f64() else { continue };
            if let Some(lr) = value["lr"].as_f64().filter(|v| v.is_finite()) {
                records.lr.push((step, lr));
            }
            for field in ["task_loss", "eval_task_loss", "task_weights"] {
                let Some(per_task) = value[field].as_object() else { continue };
                let total: f64 = per_task.values().filter_map(|v| v.as_f64()).sum();
                for (name, v) in per_task {
                    let v = v.as_f64().map(|v| if field == "task_weights" { v / total } else { v });
                    if let Some(v) = v.filter(|v| v.is_finite()) {
                        let k = records.task_index(name);
                        records.series_mut(field)[k].push((step, v));
                    }
                }
            }
        }
        records
    }

    /// Whether some task's weight changed during the run (CoBa).
    pub fn weights_move(&self) -> bool {
        self.weights.iter().any(|w| w.windows(2).any(|pair| pair[0].1 != pair[1].1))
    }

    fn task_index(&mut self, name: &str) -> usize {
        if let Some(k) = self.tasks.iter().position(|t| t == name) {
            return k;
        }
        self.tasks.push(name.to_owned());
        self.train_loss.push(Vec::new());
        self.valid_loss.push(Vec::new());
        self.weights.push(Vec::new());
        self.tasks.len() - 1
    }

    fn series_mut(&mut self, field: &str) -> &mut Vec<Vec<(f64, f64)>> {
        match field {
            "task_loss" => &mut self.train_loss,
            "eval_task_loss" => &mut self.valid_loss,
            _ => &mut self.weights,
        }
    }
}

// ANCHOR: write_plots
/// Redraw the plots of the run in `out_dir` from its `metrics.jsonl`; returns the files written.
pub fn write_plots(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let metrics = out_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).with_context(|| format!("{}: cannot read", metrics.display()))?;
    let records = Records::parse(&text);
    let colour = |k: usize| COLOURS[k % COLOURS.len()];
    let mut written = Vec::new();

    let mut loss_lines = Vec::new();
    for (k, name) in records.tasks.iter().enumerate() {
        let train = &records.train_loss[k];
        let valid = &records.valid_loss[k];
        if !train.is_empty() {
            let label = format!("{name} (train)");
            loss_lines.push(Line { label, colour: colour(k), points: train, look: Look::Faint });
        }
        if !valid.is_empty() {
            let label = format!("{name} (validation)");
            loss_lines.push(Line { label, colour: colour(k), points: valid, look: Look::Marked });
        }
    }
    if !loss_lines.is_empty() {
        let png = chart("Loss per task", "loss", &loss_lines, |y| format!("{y:.2}"))?;
        written.push(save(out_dir, LOSS_PNG, &png)?);
    }

    if records.weights_move() {
        let lines: Vec<Line> = (records.tasks.iter().zip(&records.weights).enumerate())
            .map(|(k, (name, w))| Line { label: name.clone(), colour: colour(k), points: w, look: Look::Solid })
            .collect();
        let png = chart("CoBa task loss weights", "weight share  w_k / sum of w", &lines, |y| format!("{y:.2}"))?;
        written.push(save(out_dir, WEIGHTS_PNG, &png)?);
    }

    if !records.lr.is_empty() {
        let line = Line { label: String::new(), colour: colour(0), points: &records.lr, look: Look::Solid };
        let png = chart("Learning rate", "learning rate", &[line], |y| format!("{y:.1e}"))?;
        written.push(save(out_dir, LR_PNG, &png)?);
    }
    Ok(written)
}

/// `write_plots` for the trainer: a failure becomes one warning line, and a panic inside the plotting library is
/// caught, so training goes on either way.
pub fn refresh(out_dir: &Path, progress: &indicatif::ProgressBar) {
    let outcome = std::panic::catch_unwind(|| write_plots(out_dir));
    let problem = match outcome {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => "the plotting library panicked".to_owned(),
    };
    progress.suspend(|| eprintln!("warning: training plots not updated: {problem}"));
}
// ANCHOR_END: write_plots

/// One series of a chart.
struct Line<'a> {
    /// the legend's text; a chart whose lines have none has no legend
    label: String,
    colour: RGBColor,
    points: &'a [(f64, f64)],
    look: Look,
}

enum Look {
    /// thin and translucent: per-step training loss, which is noisy
    Faint,
    /// a thick line: per-step weights, the learning rate
    Solid,
    /// a thick line with a marker per point: the few evaluations
    Marked,
}

// ANCHOR: chart
/// Draw `lines` over x = step into a WIDTH × HEIGHT white RGB buffer and encode it as PNG.
fn chart(title: &str, y_desc: &str, lines: &[Line], y_label: fn(&f64) -> String) -> Result<Vec<u8>> {
    register_font()?;
    let (x_max, (y_min, y_max)) = ranges(lines);
    let corner = emptiest_corner(lines, x_max, (y_min, y_max));
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&y_label)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .light_line_style(TRANSPARENT)
            .draw()?;
        for line in lines {
            let points = line.points.iter().copied();
            let (style, marker) = match line.look {
                Look::Faint => (line.colour.mix(0.6).stroke_width(1), 0),
                Look::Solid => (line.colour.stroke_width(2), 0),
                Look::Marked => (line.colour.stroke_width(2), 3),
            };
            let fill = if marker > 0 { line.colour.filled() } else { TRANSPARENT.filled() };
            let series = chart.draw_series(LineSeries::new(points, style).point_size(marker))?;
            if !line.label.is_empty() {
                series.label(&line.label).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], style)
                        + Circle::new((12, 0), marker, fill)
                });
            }
        }
        if lines.iter().any(|line| !line.label.is_empty()) {
            chart
                .configure_series_labels()
                .position(corner)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 16))
                .draw()?;
        }
        root.present()?;
    }
    encode_png(&rgb)
}
// ANCHOR_END: chart

/// The x range 0..last step and the y range of every point, padded by 5% (a flat series gets ±5% of its value).
fn ranges(lines: &[Line]) -> (f64, (f64, f64)) {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let lo = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (x_max, (0.0, 1.0));
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.05 * lo.abs().max(1e-12) };
    (x_max, (lo - pad, hi + pad))
}

/// The corner of the plot where the legend covers the fewest points of the lines (sampled along each segment).
fn emptiest_corner(lines: &[Line], x_max: f64, (y_min, y_max): (f64, f64)) -> SeriesLabelPosition {
    // the legend's size as a fraction of the plotting area (about 880 × 470 pixels)
    let longest = lines.iter().map(|l| l.label.chars().count()).max().unwrap_or(0) as f64;
    let (width, height) = ((longest * 9.0 + 60.0) / 880.0, (lines.len() as f64 * 21.0 + 20.0) / 470.0);
    let corners = [
        (SeriesLabelPosition::UpperRight, 1.0 - width, 1.0 - height),
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - height),
        (SeriesLabelPosition::LowerRight, 1.0 - width, 0.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
    ];
    let mut covered = [0usize; 4];
    for line in lines {
        for pair in line.points.windows(2) {
            for i in 0..8 {
                let t = i as f64 / 8.0;
                let x = (pair[0].0 + t * (pair[1].0 - pair[0].0)) / x_max;
                let y = (pair[0].1 + t * (pair[1].1 - pair[0].1) - y_min) / (y_max - y_min);
                for (n, (_, left, bottom)) in covered.iter_mut().zip(&corners) {
                    if x >= *left && x <= left + width && y >= *bottom && y <= bottom + height {
                        *n += 1;
                    }
                }
            }
        }
    }
    let best = (0..4).min_by_key(|&i| covered[i]).expect("four corners");
    corners.into_iter().nth(best).expect("four corners").0
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if *ok { Ok(()) } else { Err(anyhow!("the embedded font does not parse")) }
}

fn encode_png(rgb: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

fn save(out_dir: &Path, name: &str, png: &[u8]) -> Result<PathBuf> {
    let path = out_dir.join(name);
    write_atomic(&path, png)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removed when the test ends.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("mftcoder-plots-{name}-")).tempdir().unwrap()
    }

    /// 40 steps of two tasks with CoBa-like weights (uniform, then moving), an evaluation every 10 steps.
    fn synthetic_metrics(weights_move: bool) -> String {
        let mut text = String::new();
        for step in 1..=40 {
            let s = step as f64;
            let (wa, wb) = if weights_move && step > 5 { (0.3 + 0.01 * s, 0.7 - 0.01 * s) } else { (1.0, 1.0) };
            let line = serde_json::json!({"step": step, "epoch": 0, "lr": 1e-3 * (1.0 - s / 50.0), "loss": 2.0,
                "task_loss": {"alpha": 3.0 / s.sqrt(), "beta": 2.0 - 0.02 * s}, "grad_norm": 1.0,
                "task_weights": {"alpha": wa, "beta": wb}});
            text += &format!("{line}\n");
            if step % 10 == 0 {
                let eval = serde_json::json!({"step": step, "eval_loss": 1.5, "perplexity": 4.5,
                    "eval_task_loss": {"alpha": 2.5 / s.sqrt(), "beta": 1.9 - 0.02 * s}});
                text += &format!("{eval}\n");
            }
        }
        text + "{\"step\": 41, \"lr\": 0.0" // torn by a crash
    }

    /// Decode a PNG file: (width, height, RGB pixels).
    fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        let pixels = buf[..info.buffer_size()].chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
        (info.width, info.height, pixels)
    }

    #[test]
    fn parse_reads_train_and_evaluation_lines_and_skips_a_torn_one() {
        let records = Records::parse(&synthetic_metrics(true));
        assert_eq!(records.tasks, ["alpha", "beta"]);
        assert_eq!(records.train_loss[0].len(), 40);
        assert_eq!(records.valid_loss[1].len(), 4);
        assert_eq!(records.valid_loss[1][0].0, 10.0);
        assert_eq!(records.weights[0].len(), 40);
        assert_eq!(records.weights[0][0], (1.0, 0.5), "weights are shares: 1 / (1 + 1)");
        assert_eq!(records.lr.len(), 40, "the torn line adds nothing");
        assert!(records.weights_move());
        assert!(!Records::parse(&synthetic_metrics(false)).weights_move());
    }

    #[test]
    fn plots_are_png_files_with_every_task_drawn() {
        let tmp = scratch("render");
        let dir = tmp.path();
        std::fs::write(dir.join("metrics.jsonl"), synthetic_metrics(true)).unwrap();
        let written = write_plots(&dir).unwrap();
        assert_eq!(written, [dir.join(LOSS_PNG), dir.join(WEIGHTS_PNG), dir.join(LR_PNG)]);
        for path in &written {
            let (width, height, pixels) = decode(path);
            assert_eq!((width, height), (WIDTH, HEIGHT), "{}", path.display());
            assert_eq!(pixels[0], [255, 255, 255], "{}: white background", path.display());
            let inked = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
            assert!(inked > pixels.len() / 100, "{}: only {inked} pixels drawn", path.display());
            // the title: dark pixels in the top 40 rows, above the plotting area
            let title = pixels[..40 * WIDTH as usize].iter().filter(|p| p.iter().all(|&c| c < 80)).count();
            assert!(title > 200, "{}: only {title} dark pixels in the title rows (no text?)", path.display());
        }
        // each task's validation line and markers are drawn in its own colour, in the loss and the weights plot
        for name in [LOSS_PNG, WEIGHTS_PNG] {
            let (_, _, pixels) = decode(&dir.join(name));
            for (k, c) in COLOURS[..2].iter().enumerate() {
                let n = pixels.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
                assert!(n > 300, "{name}: task {k}'s colour covers only {n} pixels");
            }
        }
    }

    #[test]
    fn fixed_task_weights_make_no_weights_plot() {
        let tmp = scratch("fixed");
        let dir = tmp.path();
        std::fs::write(dir.join("metrics.jsonl"), synthetic_metrics(false)).unwrap();
        let written = write_plots(&dir).unwrap();
        assert_eq!(written, [dir.join(LOSS_PNG), dir.join(LR_PNG)]);
        assert!(!dir.join(WEIGHTS_PNG).exists());
    }

    #[test]
    fn a_missing_metrics_file_is_an_error_not_a_panic() {
        let tmp = scratch("missing");
        let dir = tmp.path();
        let err = write_plots(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("metrics.jsonl"), "{err:#}");
    }
}
