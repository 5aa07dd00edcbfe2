//! The memory plot of a local run: every worker's RSS over time against the memory limit and
//! the soft and hard thresholds, each restart marked by its reason, written as a PNG.
//!
//! [`RssSeries`] is what the supervisor records each round; [`write_png`] draws it. Both are
//! pure (no clock, no process, no system font): tests feed them made-up series.
//!
//! # Resource usage
//! Storage is bounded whatever the run's length. The series keeps at most `max_points` time
//! slots: each slot starts as one supervisor round; when the slots run out, neighbouring
//! slots are merged two by two (the time step doubles) and every worker keeps the larger
//! reading of each merged pair, so peaks, which restarts are about, survive. Each worker
//! process therefore has at most `max_points` points. All processes together keep at most
//! [`TOTAL_PER_WORKER_BOUND`] × `max_points` points (23,040 by default, 32 bytes each): past
//! that, slots are merged again, and if many short-lived processes still exceed it, the
//! earliest processes are forgotten (counted, and named in the legend). At most `max_marks`
//! restarts are kept; later ones are counted and named in the legend.
//!
//! The text is drawn with DejaVu Sans (a Latin-1 subset, `operator/assets/`) embedded in the
//! binary, so a machine without fonts, fontconfig or FreeType draws the same picture.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ab_glyph::{Font as _, FontRef, Glyph, PxScale, ScaleFont as _, point};
use plotters::coord::Shift;
use plotters::prelude::*;

/// The bitmap backend's error (its crate is not a direct dependency).
type BitMapBackendError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

/// Time slots kept by default: at one round per 250 ms, three minutes before the first merge.
pub const DEFAULT_MAX_POINTS: usize = 720;

/// Restarts kept by default.
pub const DEFAULT_MAX_MARKS: usize = 1024;

/// Points kept in all, as a multiple of the points one worker may keep.
pub const TOTAL_PER_WORKER_BOUND: usize = 32;

/// Smallest picture the layout fits in.
pub const MIN_SIZE: (u32, u32) = (480, 320);

/// DejaVu Sans, Latin-1 subset (see `operator/assets/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// Width of the legend column, right of the chart.
const LEGEND_WIDTH: u32 = 250;

const MIB: f64 = 1024.0 * 1024.0;

/// Why a plot cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The embedded font does not load (a corrupt build).
    #[error("cannot load the embedded plot font")]
    Font,
    /// The requested picture is smaller than the layout needs.
    #[error("plot size {width}x{height} is too small (at least {min_w}x{min_h})", min_w = MIN_SIZE.0, min_h = MIN_SIZE.1)]
    Size {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
    },
    /// The file name does not end in `.png`, the only format written.
    #[error("plot file {path} must end in .png")]
    Extension {
        /// The file.
        path: PathBuf,
    },
    /// Drawing or writing the file failed.
    #[error("cannot draw the plot to {path}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: DrawingAreaErrorKind<BitMapBackendError>,
    },
}

/// The memory numbers drawn as horizontal lines; absent ones are not drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryLines {
    /// The per-worker memory limit.
    pub limit_bytes: Option<u64>,
    /// The soft threshold: drain and replace.
    pub soft_bytes: Option<u64>,
    /// The hard threshold: kill at once.
    pub hard_bytes: Option<u64>,
}

/// One restart to mark on the plot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartMark {
    /// The worker that was restarted.
    pub worker: String,
    /// Time since the supervisor started.
    pub at: Duration,
    /// The memory the decision was taken on; when absent, the mark sits on the worker's line.
    pub memory_bytes: Option<u64>,
    /// The restart reason (`memory-soft`, `memory-hard`, `recycled`, `crashed`, ...).
    pub reason: String,
}

/// One reading kept: the slot it belongs to, when, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    slot: u64,
    at: Duration,
    bytes: u64,
}

/// The readings of one worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trace {
    worker: String,
    points: Vec<Point>,
}

/// Every worker's memory over time, the memory lines, and the restarts, in bounded storage
/// (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssSeries {
    max_points: u64,
    /// Points kept in all.
    max_total: usize,
    /// Points kept now.
    total: usize,
    /// Worker processes forgotten to stay within `max_total`.
    traces_dropped: u64,
    max_marks: usize,
    /// Rounds per slot: 1, then doubled at each merge.
    stride: u64,
    /// Rounds recorded so far.
    rounds: u64,
    end: Duration,
    traces: Vec<Trace>,
    index: HashMap<String, usize>,
    marks: Vec<RestartMark>,
    marks_dropped: u64,
    lines: MemoryLines,
}

impl RssSeries {
    /// An empty series with the default bounds.
    #[must_use]
    pub fn new(lines: MemoryLines) -> Self {
        Self::with_bounds(lines, DEFAULT_MAX_POINTS, DEFAULT_MAX_MARKS)
    }

    /// An empty series keeping at most `max_points` points per worker (at least 2) and
    /// `max_marks` restarts.
    #[must_use]
    pub fn with_bounds(lines: MemoryLines, max_points: usize, max_marks: usize) -> Self {
        Self {
            max_points: u64::try_from(max_points.max(2)).unwrap_or(u64::MAX),
            max_total: max_points.max(2).saturating_mul(TOTAL_PER_WORKER_BOUND),
            total: 0,
            traces_dropped: 0,
            max_marks,
            stride: 1,
            rounds: 0,
            end: Duration::ZERO,
            traces: Vec::new(),
            index: HashMap::new(),
            marks: Vec::new(),
            marks_dropped: 0,
            lines,
        }
    }

    /// Records one round: the memory of each worker read at `at` (time since the start).
    /// Rounds are expected in time order.
    pub fn record<'a>(&mut self, at: Duration, samples: impl IntoIterator<Item = (&'a str, u64)>) {
        if self.rounds / self.stride >= self.max_points {
            self.merge();
        }
        let slot = self.rounds / self.stride;
        self.rounds += 1;
        self.end = self.end.max(at);
        for (worker, bytes) in samples {
            let index = match self.index.get(worker) {
                Some(&i) => i,
                None => {
                    self.traces.push(Trace {
                        worker: worker.to_owned(),
                        points: Vec::new(),
                    });
                    self.index.insert(worker.to_owned(), self.traces.len() - 1);
                    self.traces.len() - 1
                }
            };
            let points = &mut self.traces[index].points;
            match points.last_mut() {
                Some(last) if last.slot == slot => {
                    if bytes >= last.bytes {
                        *last = Point { slot, at, bytes };
                    }
                }
                _ => {
                    points.push(Point { slot, at, bytes });
                    self.total += 1;
                }
            }
        }
        if self.total > self.max_total {
            self.merge();
            self.forget_earliest();
        }
    }

    /// Forgets the earliest worker processes until the points fit in `max_total` (only many
    /// short-lived processes, each with a point or two left, get here).
    fn forget_earliest(&mut self) {
        let mut forget = 0;
        let mut total = self.total;
        while total > self.max_total && forget < self.traces.len() {
            total -= self.traces[forget].points.len();
            forget += 1;
        }
        if forget == 0 {
            return;
        }
        self.traces.drain(..forget);
        self.total = total;
        self.traces_dropped += u64::try_from(forget).unwrap_or(u64::MAX);
        self.index = self
            .traces
            .iter()
            .enumerate()
            .map(|(i, t)| (t.worker.clone(), i))
            .collect();
    }

    /// Marks a restart; past `max_marks`, it is only counted.
    pub fn mark_restart(&mut self, mark: RestartMark) {
        self.end = self.end.max(mark.at);
        if self.marks.len() < self.max_marks {
            self.marks.push(mark);
        } else {
            self.marks_dropped += 1;
        }
    }

    /// Halves the slots: each pair of neighbouring slots becomes one, keeping the larger
    /// reading of each worker.
    fn merge(&mut self) {
        self.stride = self.stride.saturating_mul(2);
        for trace in &mut self.traces {
            let mut merged: Vec<Point> = Vec::with_capacity(trace.points.len() / 2 + 1);
            for p in trace.points.drain(..) {
                let p = Point {
                    slot: p.slot / 2,
                    ..p
                };
                match merged.last_mut() {
                    Some(last) if last.slot == p.slot => {
                        if p.bytes > last.bytes {
                            *last = p;
                        }
                    }
                    _ => merged.push(p),
                }
            }
            trace.points = merged;
        }
        self.total = self.traces.iter().map(|t| t.points.len()).sum();
    }

    /// The most points any one worker has.
    #[must_use]
    pub fn max_points_per_worker(&self) -> usize {
        self.traces
            .iter()
            .map(|t| t.points.len())
            .max()
            .unwrap_or(0)
    }

    /// Points kept, all workers together.
    #[must_use]
    pub fn len(&self) -> usize {
        self.traces.iter().map(|t| t.points.len()).sum()
    }

    /// Nothing recorded yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Worker processes seen.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.traces.len()
    }

    /// The time covered, from the start to the latest reading or restart.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.end
    }

    /// Restarts kept for drawing, and those only counted.
    #[must_use]
    pub fn restarts(&self) -> (usize, u64) {
        (self.marks.len(), self.marks_dropped)
    }

    /// Worker processes forgotten to keep the storage bound.
    #[must_use]
    pub fn forgotten_workers(&self) -> u64 {
        self.traces_dropped
    }

    /// The highest value the plot must show.
    fn peak_bytes(&self) -> u64 {
        let points = self
            .traces
            .iter()
            .flat_map(|t| t.points.iter().map(|p| p.bytes));
        let marks = self.marks.iter().filter_map(|m| m.memory_bytes);
        let lines = [
            self.lines.limit_bytes,
            self.lines.soft_bytes,
            self.lines.hard_bytes,
        ]
        .into_iter()
        .flatten();
        points.chain(marks).chain(lines).max().unwrap_or(0)
    }

    /// Where a mark sits: the memory it was decided on, else the worker's reading nearest in
    /// time.
    fn mark_bytes(&self, mark: &RestartMark) -> Option<u64> {
        mark.memory_bytes.or_else(|| {
            let trace = &self.traces[*self.index.get(&mark.worker)?];
            trace
                .points
                .iter()
                .min_by_key(|p| p.at.abs_diff(mark.at))
                .map(|p| p.bytes)
        })
    }
}

/// Size and title of the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOptions {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The title above the chart.
    pub title: String,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 640,
            title: "Worker memory".to_owned(),
        }
    }
}

/// How a restart reason is drawn.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Triangle,
    Square,
    Circle,
    Cross,
}

/// Marker shape and colour per restart reason. Memory reasons take the colour of their
/// threshold line.
fn marker(reason: &str) -> (Shape, RGBColor) {
    match reason {
        "memory-soft" => (Shape::Triangle, SOFT),
        "memory-hard" => (Shape::Square, HARD),
        "oom-killed" => (Shape::Cross, RGBColor(139, 0, 0)),
        "recycled" => (Shape::Circle, RGBColor(31, 119, 180)),
        "crashed" => (Shape::Cross, BLACK),
        "evicted" => (Shape::Square, RGBColor(148, 103, 189)),
        "updated" => (Shape::Circle, RGBColor(44, 160, 44)),
        _ => (Shape::Circle, RGBColor(150, 150, 150)),
    }
}

const LIMIT: RGBColor = RGBColor(90, 90, 90);
const SOFT: RGBColor = RGBColor(255, 140, 0);
const HARD: RGBColor = RGBColor(214, 39, 40);

/// Worker lines: muted colours, none of them the threshold colours.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
];

/// The embedded font, parsed once.
fn font() -> Result<&'static FontRef<'static>, PlotError> {
    static PARSED: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    PARSED
        .get_or_init(|| FontRef::try_from_slice(FONT).ok())
        .as_ref()
        .ok_or(PlotError::Font)
}

/// Draws `series` as a PNG of `options.width` × `options.height` at `path`.
///
/// # Errors
/// [`PlotError`] when the size is below [`MIN_SIZE`], the file name does not end in `.png`,
/// or drawing or writing the file fails.
pub fn write_png(series: &RssSeries, options: &PlotOptions, path: &Path) -> Result<(), PlotError> {
    if options.width < MIN_SIZE.0 || options.height < MIN_SIZE.1 {
        return Err(PlotError::Size {
            width: options.width,
            height: options.height,
        });
    }
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return Err(PlotError::Extension {
            path: path.to_owned(),
        });
    }
    let font = font()?;
    let draw_error = |source| PlotError::Draw {
        path: path.to_owned(),
        source,
    };
    let root = BitMapBackend::new(path, (options.width, options.height)).into_drawing_area();
    let canvas = Canvas { area: &root, font };
    draw(series, options, &canvas).map_err(draw_error)?;
    root.present().map_err(draw_error)
}

type DrawResult = Result<(), DrawingAreaErrorKind<BitMapBackendError>>;

/// Where text goes relative to its anchor point.
#[derive(Debug, Clone, Copy)]
enum Align {
    Start,
    Middle,
    End,
}

/// The whole picture and the font its text is drawn with.
///
/// Text is rasterised here with `ab_glyph` rather than by plotters' own text support, which
/// needs system fonts (its `ttf` feature) or places glyphs without their side bearings (its
/// `ab_glyph` feature: "173" reads "17 3").
struct Canvas<'a, 'b> {
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    font: &'static FontRef<'static>,
}

impl Canvas<'_, '_> {
    /// Glyphs of `text` on a baseline from the origin, and the advance width.
    fn layout(&self, text: &str, size: f32) -> (Vec<Glyph>, f32) {
        let scaled = self.font.as_scaled(PxScale::from(size));
        let mut x = 0.0;
        let mut previous = None;
        let mut glyphs = Vec::with_capacity(text.len());
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = previous {
                x += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(size, point(x, 0.0)));
            x += scaled.h_advance(id);
            previous = Some(id);
        }
        (glyphs, x)
    }

    /// Draws `text` at pixel `at` of the picture: `h` along the text, `v` across it (Start is
    /// the top, Middle the centre of the line, End the bottom); `upright` turns it a quarter
    /// anticlockwise, for the y axis.
    fn text(
        &self,
        text: &str,
        at: (i32, i32),
        size: f32,
        color: RGBColor,
        (h, v): (Align, Align),
        upright: bool,
    ) -> DrawResult {
        let scaled = self.font.as_scaled(PxScale::from(size));
        let (glyphs, width) = self.layout(text, size);
        let dx = match h {
            Align::Start => 0.0,
            Align::Middle => -width / 2.0,
            Align::End => -width,
        };
        // Baseline below the anchor; descent is negative.
        let dy = match v {
            Align::Start => scaled.ascent(),
            Align::Middle => (scaled.ascent() + scaled.descent()) / 2.0,
            Align::End => scaled.descent(),
        };
        let mut pixels: Vec<((i32, i32), f32)> = Vec::new();
        for glyph in glyphs {
            let Some(outline) = self.font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            outline.draw(|x, y, coverage| {
                #[allow(clippy::cast_precision_loss)] // glyph pixels: small numbers
                let (tx, ty) = (bounds.min.x + x as f32 + dx, bounds.min.y + y as f32 + dy);
                #[allow(clippy::cast_possible_truncation)] // pixels of a picture
                let (tx, ty) = (tx.round() as i32, ty.round() as i32);
                let pixel = if upright {
                    (at.0 + ty, at.1 - tx)
                } else {
                    (at.0 + tx, at.1 + ty)
                };
                pixels.push((pixel, coverage));
            });
        }
        for (pixel, coverage) in pixels {
            if coverage > 0.0 {
                self.area
                    .draw_pixel(pixel, &color.mix(f64::from(coverage.min(1.0))))?;
            }
        }
        Ok(())
    }
}

/// Tick values from 0 to `max`: 1, 2 or 5 times a power of ten apart, about `count` of them.
fn ticks(max: f64, count: u32) -> Vec<f64> {
    if !(max.is_finite() && max > 0.0) || count == 0 {
        return vec![0.0];
    }
    let rough = max / f64::from(count);
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let mut out = Vec::new();
    let mut i = 0.0;
    while i * step <= max + step * 1e-9 && out.len() < 100 {
        out.push(i * step);
        i += 1.0;
    }
    out
}

/// A tick label: whole numbers without decimals.
fn tick_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn draw(series: &RssSeries, options: &PlotOptions, canvas: &Canvas<'_, '_>) -> DrawResult {
    let root = canvas.area;
    root.fill(&WHITE)?;
    let (width, height) = (
        i32::try_from(options.width).unwrap_or(i32::MAX),
        i32::try_from(options.height).unwrap_or(i32::MAX),
    );
    let legend_width = i32::try_from(LEGEND_WIDTH).unwrap_or(0);
    // The plotting rectangle, in pixels of the picture.
    let (left, right, top, bottom) = (78, width - legend_width - 16, 52, height - 62);
    canvas.text(
        &options.title,
        ((left + right) / 2, 16),
        22.0,
        BLACK,
        (Align::Middle, Align::Start),
        false,
    )?;

    let x_max = series.end.as_secs_f64().max(1.0) * 1.02;
    #[allow(clippy::cast_precision_loss)] // display only
    let y_max = (series.peak_bytes() as f64 / MIB).max(1.0) * 1.08;
    let plot_area = root.margin(top, height - bottom, left, width - right);
    let mut chart = ChartBuilder::on(&plot_area).build_cartesian_2d(0f64..x_max, 0f64..y_max)?;

    // Grid, ticks and their labels.
    let grid = RGBColor(228, 228, 228);
    let axis = RGBColor(110, 110, 110);
    let label = RGBColor(60, 60, 60);
    for x in ticks(x_max, 10) {
        let (px, _) = chart.backend_coord(&(x, 0.0));
        root.draw(&PathElement::new(vec![(px, top), (px, bottom)], grid))?;
        root.draw(&PathElement::new(
            vec![(px, bottom), (px, bottom + 5)],
            axis,
        ))?;
        canvas.text(
            &tick_label(x),
            (px, bottom + 9),
            14.0,
            label,
            (Align::Middle, Align::Start),
            false,
        )?;
    }
    for y in ticks(y_max, 8) {
        let (_, py) = chart.backend_coord(&(0.0, y));
        root.draw(&PathElement::new(vec![(left, py), (right, py)], grid))?;
        root.draw(&PathElement::new(vec![(left - 5, py), (left, py)], axis))?;
        canvas.text(
            &tick_label(y),
            (left - 9, py),
            14.0,
            label,
            (Align::End, Align::Middle),
            false,
        )?;
    }
    root.draw(&PathElement::new(
        vec![(left, top), (left, bottom), (right, bottom)],
        axis.stroke_width(1),
    ))?;
    canvas.text(
        "time since the supervisor started (s)",
        ((left + right) / 2, height - 10),
        15.0,
        BLACK,
        (Align::Middle, Align::End),
        false,
    )?;
    canvas.text(
        "RSS (MiB)",
        (16, (top + bottom) / 2),
        15.0,
        BLACK,
        (Align::Middle, Align::Middle),
        true,
    )?;

    // The thresholds, under the workers' lines, each named above its left end (where the
    // workers, young and small, rarely are).
    for (bytes, color, name) in threshold_lines(&series.lines) {
        #[allow(clippy::cast_precision_loss)] // display only
        let y = bytes as f64 / MIB;
        chart.draw_series(DashedLineSeries::new(
            [(0.0, y), (x_max, y)],
            10,
            6,
            color.stroke_width(2),
        ))?;
        let (_, py) = chart.backend_coord(&(0.0, y));
        let darker = |c: u8| u8::try_from(u16::from(c) * 4 / 5).unwrap_or(c);
        let darker = RGBColor(darker(color.0), darker(color.1), darker(color.2));
        canvas.text(
            &format!("{name} {}", mib(bytes)),
            (left + 8, py - 4),
            13.0,
            darker,
            (Align::Start, Align::End),
            false,
        )?;
    }

    for (i, trace) in series.traces.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        #[allow(clippy::cast_precision_loss)] // display only
        let points = trace
            .points
            .iter()
            .map(|p| (p.at.as_secs_f64(), p.bytes as f64 / MIB));
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
    }

    for mark in &series.marks {
        let Some(bytes) = series.mark_bytes(mark) else {
            continue;
        };
        #[allow(clippy::cast_precision_loss)] // display only
        let at = (mark.at.as_secs_f64(), bytes as f64 / MIB);
        let (shape, color) = marker(&mark.reason);
        draw_marker(root, chart.backend_coord(&at), shape, color)?;
    }

    draw_legend(series, canvas, (right + 28, top))
}

/// The thresholds to draw, largest first, with their colours and names.
fn threshold_lines(lines: &MemoryLines) -> Vec<(u64, RGBColor, &'static str)> {
    [
        (lines.limit_bytes, LIMIT, "limit"),
        (lines.hard_bytes, HARD, "hard"),
        (lines.soft_bytes, SOFT, "soft"),
    ]
    .into_iter()
    .filter_map(|(bytes, color, name)| bytes.map(|b| (b, color, name)))
    .collect()
}

/// One marker centred on pixel `at` of the picture.
fn draw_marker(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    (x, y): (i32, i32),
    shape: Shape,
    color: RGBColor,
) -> DrawResult {
    let outline = BLACK.stroke_width(1);
    match shape {
        Shape::Triangle => {
            root.draw(&TriangleMarker::new((x, y), 8, color.filled()))?;
            root.draw(&TriangleMarker::new((x, y), 8, outline))?;
        }
        Shape::Square => {
            root.draw(&Rectangle::new(
                [(x - 6, y - 6), (x + 6, y + 6)],
                color.filled(),
            ))?;
            root.draw(&Rectangle::new([(x - 6, y - 6), (x + 6, y + 6)], outline))?;
        }
        Shape::Circle => {
            root.draw(&Circle::new((x, y), 6, color.filled()))?;
            root.draw(&Circle::new((x, y), 6, outline))?;
        }
        Shape::Cross => {
            root.draw(&Cross::new((x, y), 6, color.stroke_width(3)))?;
        }
    }
    Ok(())
}

/// The legend column from pixel `(x, y)` down: worker lines, thresholds, restarts by reason.
fn draw_legend(series: &RssSeries, canvas: &Canvas<'_, '_>, (x, mut y): (i32, i32)) -> DrawResult {
    let root = canvas.area;
    let step = 24;
    let x_text = x + 44;
    let line = |y: i32, color: RGBColor, dashed: bool| -> DrawResult {
        if dashed {
            for x0 in [x, x + 13, x + 26] {
                root.draw(&PathElement::new(
                    vec![(x0, y), (x0 + 8, y)],
                    color.stroke_width(2),
                ))?;
            }
            Ok(())
        } else {
            root.draw(&PathElement::new(
                vec![(x, y), (x + 34, y)],
                color.stroke_width(2),
            ))
        }
    };
    let heading = |text: &str, y: i32| {
        canvas.text(
            text,
            (x, y),
            16.0,
            BLACK,
            (Align::Start, Align::Middle),
            false,
        )
    };
    let entry = |text: &str, y: i32| {
        canvas.text(
            text,
            (x_text, y),
            14.0,
            RGBColor(40, 40, 40),
            (Align::Start, Align::Middle),
            false,
        )
    };

    heading("Workers", y)?;
    y += step;
    let workers = series.traces.len();
    if series.traces_dropped > 0 {
        entry(&format!("{} earliest not drawn", series.traces_dropped), y)?;
        y += step;
    }
    if workers == 0 {
        entry("no readings", y)?;
        y += step;
    } else if workers <= 6 {
        for (i, trace) in series.traces.iter().enumerate() {
            line(y, PALETTE[i % PALETTE.len()], false)?;
            entry(&trace.worker, y)?;
            y += step;
        }
    } else {
        for (i, color) in (-1..=1).zip(PALETTE) {
            line(y + 8 + 5 * i, color, false)?;
        }
        entry(&format!("{workers} worker processes,"), y)?;
        y += 18;
        entry("one colour each", y)?;
        y += step;
    }

    y += step / 2;
    let lines = threshold_lines(&series.lines);
    if !lines.is_empty() {
        heading("Memory thresholds", y)?;
        y += step;
        for (bytes, color, name) in lines {
            line(y, color, true)?;
            entry(&format!("{name} {}", mib(bytes)), y)?;
            y += step;
        }
        y += step / 2;
    }

    heading("Restarts", y)?;
    y += step;
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for mark in &series.marks {
        *by_reason.entry(mark.reason.as_str()).or_insert(0) += 1;
    }
    if by_reason.is_empty() {
        entry("none", y)?;
        y += step;
    }
    for (reason, count) in by_reason {
        let (shape, color) = marker(reason);
        draw_marker(root, (x + 17, y), shape, color)?;
        entry(&format!("{reason} ({count})"), y)?;
        y += step;
    }
    if series.marks_dropped > 0 {
        entry(&format!("{} more not drawn", series.marks_dropped), y)?;
    }
    Ok(())
}

/// Bytes as MiB for the legend.
fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // display only
    let v = bytes as f64 / MIB;
    if v >= 100.0 {
        format!("{v:.0} MiB")
    } else {
        format!("{v:.1} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn lines() -> MemoryLines {
        MemoryLines {
            limit_bytes: Some(192 * MI),
            soft_bytes: Some(134 * MI),
            hard_bytes: Some(173 * MI),
        }
    }

    /// Width and height from a PNG's signature and IHDR chunk.
    fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
        let signature = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        if bytes.get(..8)? != signature || bytes.get(12..16)? != b"IHDR" {
            return None;
        }
        let be = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        Some((be(16)?, be(20)?))
    }

    /// A run of three leaking workers, each replaced at the soft limit.
    fn leaking_run(rounds: u64) -> RssSeries {
        let mut series = RssSeries::new(lines());
        let mut generation = [1u64, 2, 3];
        let mut born = [0u64; 3];
        let mut next = 4;
        for round in 0..rounds {
            let at = Duration::from_millis(round * 250);
            let mut samples = Vec::new();
            for slot in 0..3 {
                let memory =
                    |born: u64| 40 * MI + (round - born) * (MI / 2) + (slot as u64) * 3 * MI;
                let bytes = memory(born[slot]);
                if bytes > 134 * MI {
                    series.mark_restart(RestartMark {
                        worker: format!("local-{}", generation[slot]),
                        at,
                        memory_bytes: Some(bytes),
                        reason: "memory-soft".to_owned(),
                    });
                    generation[slot] = next;
                    next += 1;
                    born[slot] = round;
                }
                samples.push((format!("local-{}", generation[slot]), memory(born[slot])));
            }
            series.record(at, samples.iter().map(|(w, b)| (w.as_str(), *b)));
        }
        series
    }

    #[test]
    fn the_plot_is_a_png_of_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rss.png");
        let mut series = leaking_run(800);
        series.mark_restart(RestartMark {
            worker: "local-2".to_owned(),
            at: Duration::from_secs(30),
            memory_bytes: None,
            reason: "crashed".to_owned(),
        });
        let options = PlotOptions {
            width: 900,
            height: 500,
            title: "test".to_owned(),
        };
        write_png(&series, &options, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), Some((900, 500)));
    }

    #[test]
    fn an_empty_series_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let series = RssSeries::new(MemoryLines::default());
        write_png(&series, &PlotOptions::default(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), Some((1280, 640)));
    }

    #[test]
    fn decimation_keeps_every_worker_within_the_bound() {
        let mut series = RssSeries::with_bounds(lines(), 100, 10);
        for round in 0..10_000u64 {
            series.record(
                Duration::from_millis(round * 100),
                [("local-1", round), ("local-2", 10_000 - round)],
            );
            assert!(series.max_points_per_worker() <= 100, "round {round}");
        }
        assert!(
            series.max_points_per_worker() >= 50,
            "merging halves the points, it does not drop them all"
        );
        assert_eq!(series.duration(), Duration::from_millis(999_900));
    }

    /// Many short-lived workers (one process per round) cannot grow the series past its
    /// total bound.
    #[test]
    fn short_lived_workers_keep_the_total_bound() {
        let mut series = RssSeries::with_bounds(lines(), 10, 10);
        let bound = 10 * TOTAL_PER_WORKER_BOUND;
        for round in 0..5_000u64 {
            let a = format!("local-{}", 2 * round);
            let b = format!("local-{}", 2 * round + 1);
            series.record(
                Duration::from_millis(round * 100),
                [(a.as_str(), MI), (b.as_str(), 2 * MI)],
            );
            assert!(series.len() <= bound, "round {round}: {}", series.len());
        }
        assert!(series.forgotten_workers() > 0);
        assert!(series.workers() <= bound);
        assert!(series.len() > bound / 4, "the bound is used, not emptied");
    }

    #[test]
    fn merged_slots_keep_the_peak() {
        let mut series = RssSeries::with_bounds(lines(), 4, 10);
        for (round, bytes) in [5u64, 90, 7, 8, 6, 3, 2, 1, 4].into_iter().enumerate() {
            series.record(Duration::from_secs(round as u64), [("local-1", bytes * MI)]);
        }
        assert_eq!(series.peak_bytes(), 192 * MI, "the limit line is the top");
        let points: Vec<u64> = series.traces[0]
            .points
            .iter()
            .map(|p| p.bytes / MI)
            .collect();
        assert!(points.len() <= 4);
        assert!(points.contains(&90), "the spike survives: {points:?}");
    }

    #[test]
    fn restarts_past_the_bound_are_counted_not_kept() {
        let mut series = RssSeries::with_bounds(lines(), 10, 2);
        for i in 0..5 {
            series.mark_restart(RestartMark {
                worker: format!("local-{i}"),
                at: Duration::from_secs(i),
                memory_bytes: None,
                reason: "recycled".to_owned(),
            });
        }
        assert_eq!(series.restarts(), (2, 3));
    }

    #[test]
    fn a_mark_without_memory_sits_on_its_worker_line() {
        let mut series = RssSeries::new(lines());
        series.record(Duration::from_secs(1), [("local-1", 10 * MI)]);
        series.record(Duration::from_secs(2), [("local-1", 20 * MI)]);
        let mark = RestartMark {
            worker: "local-1".to_owned(),
            at: Duration::from_millis(2100),
            memory_bytes: None,
            reason: "crashed".to_owned(),
        };
        assert_eq!(series.mark_bytes(&mark), Some(20 * MI));
        let unknown = RestartMark {
            worker: "local-9".to_owned(),
            ..mark
        };
        assert_eq!(series.mark_bytes(&unknown), None);
    }

    #[test]
    fn bad_sizes_and_names_are_refused_before_drawing() {
        let series = RssSeries::new(lines());
        let tiny = PlotOptions {
            width: 10,
            height: 10,
            title: String::new(),
        };
        assert!(matches!(
            write_png(&series, &tiny, Path::new("x.png")),
            Err(PlotError::Size { .. })
        ));
        let err = write_png(&series, &PlotOptions::default(), Path::new("rss.jpg")).unwrap_err();
        assert_eq!(err.to_string(), "plot file rss.jpg must end in .png");
    }
}
