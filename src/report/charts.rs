//! The report's charts, drawn with plotters' SVG backend into a `String`
//! that the page inlines: no file, no font file, no script. Every chart is
//! a bar chart of counts (one colour per series, the night reported in a
//! darker shade); the numbers themselves are in a table beside each chart,
//! which is what a reader copies and what the tests read.
//!
//! Text is laid out by the browser: the SVG names a generic font family
//! and the page's stylesheet picks a CJK-capable one. plotters' own estimate
//! of a label's width (it has no font metrics without its `ttf` feature) is
//! not used for the label areas: [`label_width`] sizes them.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// A colour as the page's legend also writes it (`#RRGGBB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub fn hex(self) -> String {
        format!("#{:02X}{:02X}{:02X}", self.0, self.1, self.2)
    }

    fn plotters(self) -> RGBColor {
        RGBColor(self.0, self.1, self.2)
    }

    /// The same hue, lighter: `share` of the way to white.
    pub fn lighter(self, share: f64) -> Rgb {
        let mix = |c: u8| (f64::from(c) + (255.0 - f64::from(c)) * share).round() as u8;
        Rgb(mix(self.0), mix(self.1), mix(self.2))
    }
}

/// One bar: its label on the category axis and its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub label: String,
    pub value: i64,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: i64) -> Bar {
        Bar {
            label: label.into(),
            value,
        }
    }
}

/// The width of the page's content on A4 (210 mm less 2 × 15 mm margins
/// at 96 px per inch): the widest a chart is drawn.
pub const PAGE_WIDTH: u32 = 680;

const FONT: &str = "sans-serif";
const AXIS: RGBColor = RGBColor(0x55, 0x55, 0x55);
const GRID: RGBColor = RGBColor(0xE4, 0xE4, 0xE4);

fn drawing_error(e: impl std::fmt::Debug) -> Error {
    Error::Runtime(anyhow::anyhow!("cannot draw a report chart: {e:?}"))
}

/// Pixels a label takes at `size` px: about one em for a CJK character,
/// 0.6 em for others (the browser's font decides; this only sizes the
/// label area so that no label is clipped).
pub fn label_width(label: &str, size: u32) -> u32 {
    let ems: f64 = label
        .chars()
        .map(|c| if (c as u32) >= 0x2E80 { 1.0 } else { 0.6 })
        .sum();
    (ems * f64::from(size)).ceil() as u32
}

/// The top of a count axis: a little above `max`, on a round number, so
/// that the ticks [`axis_ticks`] asks for fall on whole counts.
fn axis_top(max: i64) -> f64 {
    let max = max.max(1) as f64 * 1.1;
    let magnitude = 10f64.powf(max.log10().floor());
    let top = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|t| *t >= max)
        .unwrap_or(10.0 * magnitude);
    top.max(2.0)
}

/// How many ticks a count axis up to `top` gets: whole counts only.
fn axis_ticks(top: f64) -> usize {
    (top as usize).clamp(2, 5) + 1
}

/// A count axis's tick label: whole numbers only (a tick between two
/// counts would read "0.5 notices").
fn count_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// A category axis of `n` categories: category k is centred on k.
fn categories(n: usize) -> std::ops::Range<f64> {
    -0.5..(n.max(1) as f64 - 0.5)
}

/// The category a tick of a category axis stands on, if any (ticks fall
/// on whole numbers: a category axis asks for no more ticks than
/// categories).
fn category_at(v: f64, n: usize) -> Option<usize> {
    let r = v.round();
    ((v - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n).then_some(r as usize)
}

/// Whether category `k` of `n` gets its label when only every `every`th
/// does: the last always, and no label crowding it.
fn labelled(k: usize, n: usize, every: usize) -> bool {
    let last = n.saturating_sub(1);
    k == last || (k.is_multiple_of(every) && last - k > every / 2)
}

fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        draw(&root)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(out)
}

/// The axis styles every chart shares: light grid on the count axis only,
/// whole counts as tick labels.
macro_rules! mesh {
    ($chart:expr, counts_on_x = $x:expr, top = $top:expr, categories = $n:expr, label = $label:expr, size = $size:expr) => {{
        let mut mesh = $chart.configure_mesh();
        mesh.light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .axis_style(AXIS)
            .label_style((FONT, $size).into_font().color(&AXIS));
        if $x {
            mesh.disable_y_mesh()
                .y_labels($n)
                .y_label_formatter($label)
                .x_labels(axis_ticks($top))
                .x_label_formatter(&count_label);
        } else {
            mesh.disable_x_mesh()
                .x_labels($n)
                .x_label_formatter($label)
                .y_labels(axis_ticks($top))
                .y_label_formatter(&count_label);
        }
        mesh.draw().map_err(drawing_error)
    }};
}

/// An upright bar of category `k` from `a` to `b`, `gap` of the slot
/// left free on each side.
fn upright(k: usize, a: f64, b: f64, gap: f64, color: Rgb) -> Rectangle<(f64, f64)> {
    let k = k as f64;
    Rectangle::new(
        [(k - 0.5 + gap, a), (k + 0.5 - gap, b)],
        color.plotters().filled(),
    )
}

/// A bar across in row `row` from `a` to `b`.
fn across(row: usize, a: f64, b: f64, gap: f64, color: Rgb) -> Rectangle<(f64, f64)> {
    let row = row as f64;
    Rectangle::new(
        [(a, row - 0.5 + gap), (b, row + 0.5 - gap)],
        color.plotters().filled(),
    )
}

/// One bar per night (oldest first), the last — the night reported — in
/// `color`, the others lighter; a dark line at `mean` (the earlier nights'
/// average). Labels are thinned to about eight.
pub fn nights(
    bars: &[Bar],
    color: Rgb,
    mean: Option<f64>,
    width: u32,
    height: u32,
) -> Result<String> {
    let n = bars.len();
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0);
    let top = axis_top(max.max(mean.map_or(0, |m| m.ceil() as i64)));
    let every = (n / 8).max(1);
    svg(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(6)
            .margin_right(10)
            .x_label_area_size(22)
            .y_label_area_size(label_width(&format!("{}", top as i64), 11) + 12)
            .build_cartesian_2d(categories(n), 0f64..top)
            .map_err(drawing_error)?;
        let label = |v: &f64| match category_at(*v, n) {
            Some(k) if labelled(k, n, every) => bars[k].label.clone(),
            _ => String::new(),
        };
        mesh!(
            chart,
            counts_on_x = false,
            top = top,
            categories = n.max(1),
            label = &label,
            size = 11
        )?;
        let last = n.saturating_sub(1);
        chart
            .draw_series(bars.iter().enumerate().map(|(k, b)| {
                let fill = if k == last {
                    color
                } else {
                    color.lighter(0.55)
                };
                upright(k, 0.0, b.value as f64, 0.08, fill)
            }))
            .map_err(drawing_error)?;
        if let Some(m) = mean {
            let ends = categories(n);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(ends.start, m), (ends.end, m)],
                    RGBColor(0x33, 0x33, 0x33).stroke_width(1),
                )))
                .map_err(drawing_error)?;
        }
        Ok(())
    })
}

/// Horizontal bars, first item on top, each with its count at its end.
pub fn horizontal(bars: &[Bar], color: Rgb, width: u32) -> Result<String> {
    let n = bars.len();
    let height = 26 * n.max(1) as u32 + 36;
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0);
    let top = axis_top(max);
    let labels = bars
        .iter()
        .map(|b| label_width(&b.label, 12))
        .max()
        .unwrap_or(0)
        .clamp(40, width / 2);
    // Item k is drawn in row n-1-k: the list reads top down.
    let row = |k: usize| n.saturating_sub(1) - k;
    svg(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(6)
            .margin_right(28)
            .x_label_area_size(22)
            .y_label_area_size(labels + 10)
            .build_cartesian_2d(0f64..top, categories(n))
            .map_err(drawing_error)?;
        let label = |v: &f64| match category_at(*v, n) {
            Some(r) => bars[row(r)].label.clone(),
            None => String::new(),
        };
        mesh!(
            chart,
            counts_on_x = true,
            top = top,
            categories = n.max(1),
            label = &label,
            size = 12
        )?;
        chart
            .draw_series(
                bars.iter()
                    .enumerate()
                    .map(|(k, b)| across(row(k), 0.0, b.value as f64, 0.18, color)),
            )
            .map_err(drawing_error)?;
        let style = (FONT, 11)
            .into_font()
            .color(&RGBColor(0x22, 0x22, 0x22))
            .pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(bars.iter().enumerate().map(|(k, b)| {
                Text::new(
                    format!(" {}", b.value),
                    (b.value as f64, row(k) as f64),
                    style.clone(),
                )
            }))
            .map_err(drawing_error)?;
        Ok(())
    })
}

/// Vertical bars over categories (days left, time buckets), labels
/// thinned to about `max_labels`.
pub fn vertical(
    bars: &[Bar],
    color: Rgb,
    max_labels: usize,
    width: u32,
    height: u32,
) -> Result<String> {
    let n = bars.len();
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0);
    let top = axis_top(max);
    let every = n.div_ceil(max_labels.max(1)).max(1);
    svg(width, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(6)
            .margin_right(10)
            .x_label_area_size(24)
            .y_label_area_size(label_width(&format!("{}", top as i64), 11) + 12)
            .build_cartesian_2d(categories(n), 0f64..top)
            .map_err(drawing_error)?;
        let label = |v: &f64| match category_at(*v, n) {
            Some(k) if k % every == 0 => bars[k].label.clone(),
            _ => String::new(),
        };
        mesh!(
            chart,
            counts_on_x = false,
            top = top,
            categories = n.max(1),
            label = &label,
            size = 11
        )?;
        chart
            .draw_series(
                bars.iter()
                    .enumerate()
                    .map(|(k, b)| upright(k, 0.0, b.value as f64, 0.12, color)),
            )
            .map_err(drawing_error)?;
        Ok(())
    })
}

/// Stacked bars, one per category (a channel, a night), each split into
/// `colors.len()` segments in order. `horizontal`: bars across, first
/// category on top; otherwise upright, labels thinned to about eight.
pub fn stacked(
    cats: &[(String, Vec<i64>)],
    colors: &[Rgb],
    horizontal: bool,
    width: u32,
    height: u32,
) -> Result<String> {
    let n = cats.len();
    let max = cats
        .iter()
        .map(|(_, v)| v.iter().sum::<i64>())
        .max()
        .unwrap_or(0);
    let top = axis_top(max);
    let every = (n / 8).max(1);
    // Each category's non-empty segments as (category, series, start, end).
    let segments: Vec<(usize, usize, f64, f64)> = cats
        .iter()
        .enumerate()
        .flat_map(|(k, (_, values))| {
            let mut at = 0.0;
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(s, v)| {
                    let start = at;
                    at += *v as f64;
                    (k, s, start, at)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let color_of = |s: usize| colors.get(s).copied().unwrap_or(Rgb(0x88, 0x88, 0x88));
    let row = |k: usize| n.saturating_sub(1) - k;
    svg(width, height, |root| {
        if horizontal {
            let labels = cats
                .iter()
                .map(|(l, _)| label_width(l, 12))
                .max()
                .unwrap_or(0)
                .clamp(40, width / 2);
            let mut chart = ChartBuilder::on(root)
                .margin(6)
                .margin_right(14)
                .x_label_area_size(22)
                .y_label_area_size(labels + 10)
                .build_cartesian_2d(0f64..top, categories(n))
                .map_err(drawing_error)?;
            let label = |v: &f64| match category_at(*v, n) {
                Some(r) => cats[row(r)].0.clone(),
                None => String::new(),
            };
            mesh!(
                chart,
                counts_on_x = true,
                top = top,
                categories = n.max(1),
                label = &label,
                size = 12
            )?;
            chart
                .draw_series(
                    segments
                        .iter()
                        .map(|&(k, s, a, b)| across(row(k), a, b, 0.2, color_of(s))),
                )
                .map_err(drawing_error)?;
        } else {
            let mut chart = ChartBuilder::on(root)
                .margin(6)
                .margin_right(10)
                .x_label_area_size(22)
                .y_label_area_size(label_width(&format!("{}", top as i64), 11) + 12)
                .build_cartesian_2d(categories(n), 0f64..top)
                .map_err(drawing_error)?;
            let label = |v: &f64| match category_at(*v, n) {
                Some(k) if labelled(k, n, every) => cats[k].0.clone(),
                _ => String::new(),
            };
            mesh!(
                chart,
                counts_on_x = false,
                top = top,
                categories = n.max(1),
                label = &label,
                size = 11
            )?;
            chart
                .draw_series(
                    segments
                        .iter()
                        .map(|&(k, s, a, b)| upright(k, a, b, 0.08, color_of(s))),
                )
                .map_err(drawing_error)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rects(svg: &str) -> usize {
        svg.matches("<rect").count()
    }

    #[test]
    fn a_chart_is_one_svg_element_with_a_view_box_and_no_external_reference() {
        let bars = [Bar::new("11-26", 3), Bar::new("11-27", 5)];
        let svg = nights(&bars, Rgb(0x2E, 0x7D, 0x32), Some(3.0), 320, 160).expect("chart");
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.contains("viewBox=\"0 0 320 160\""), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        for external in ["href", "url(", "<script", "<image", "@import"] {
            assert!(!svg.contains(external), "{external} in {svg}");
        }
    }

    #[test]
    fn every_bar_is_drawn_and_the_reported_night_is_darker() {
        let bars = [Bar::new("a", 3), Bar::new("b", 4), Bar::new("c", 5)];
        let color = Rgb(0x2E, 0x7D, 0x32);
        let svg = nights(&bars, color, None, 320, 160).expect("chart");
        // The background, then one rectangle per bar.
        assert_eq!(rects(&svg), 1 + 3, "{svg}");
        assert_eq!(svg.matches(&color.hex()).count(), 1, "{svg}");
        assert_eq!(svg.matches(&color.lighter(0.55).hex()).count(), 2, "{svg}");
    }

    #[test]
    fn labels_are_escaped_and_cjk_labels_are_kept() {
        let bars = [Bar::new("地址变化 <A&B>", 2), Bar::new("婚姻变化", 1)];
        let svg = horizontal(&bars, Rgb(0xEF, 0x6C, 0x00), 600).expect("chart");
        assert!(svg.contains("地址变化 &lt;A&amp;B&gt;"), "{svg}");
        assert!(svg.contains("婚姻变化"), "{svg}");
        assert!(!svg.contains("<A&B>"));
    }

    #[test]
    fn stacked_segments_skip_zero_counts() {
        let cats = vec![
            ("sms".to_string(), vec![3, 0, 1]),
            ("email".to_string(), vec![0, 0, 2]),
        ];
        let colors = [Rgb(1, 2, 3), Rgb(4, 5, 6), Rgb(7, 8, 9)];
        for horizontal in [true, false] {
            let svg = stacked(&cats, &colors, horizontal, 600, 140).expect("chart");
            assert_eq!(rects(&svg), 1 + 3, "{svg}");
            assert!(!svg.contains(&Rgb(4, 5, 6).hex()), "{svg}");
        }
    }

    #[test]
    fn empty_and_all_zero_data_still_draw_an_axis() {
        for bars in [vec![], vec![Bar::new("x", 0)]] {
            let svg = vertical(&bars, Rgb(0, 0, 0), 8, 400, 150).expect("chart");
            assert!(svg.contains("<line") || svg.contains("<polyline"), "{svg}");
        }
    }

    #[test]
    fn the_count_axis_ends_on_a_round_number_above_the_largest_count() {
        assert_eq!(axis_top(0), 2.0);
        assert_eq!(axis_top(1), 2.0);
        assert_eq!(axis_top(9), 10.0);
        assert_eq!(axis_top(29), 40.0);
        assert_eq!(axis_top(230), 300.0);
        assert_eq!(count_label(&2.0), "2");
        assert_eq!(count_label(&2.5), "");
    }

    #[test]
    fn a_cjk_label_is_counted_about_one_em_a_character() {
        assert_eq!(label_width("浦东新区", 12), 48);
        assert_eq!(label_width("sms", 10), 18);
    }
}
