//! The bench's chart: throughput and p99 latency against concurrency, one
//! line per mode, as an SVG file.
//!
//! Only plotters' SVG backend is built: it writes text as `<text>` elements
//! and lays labels out with plotters' built-in size estimate, so drawing
//! needs no font files and no system libraries.

use std::path::Path;

use plotters::{coord::combinators::IntoLogRange, prelude::*};

/// One mode's line: (concurrency, calls/s, p99 in ms) per point.
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) points: Vec<(usize, f64, f64)>,
}

/// The chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("chart {path}: {message}")]
pub(crate) struct ChartError {
    path: String,
    message: String,
}

/// Series colours in order: red, blue, grey, orange, green.
const COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Draws `series` into `path`, two panels side by side, captioned with `title`.
pub(crate) fn draw(path: &Path, title: &str, series: &[Series]) -> Result<(), ChartError> {
    let fail = |e: &dyn std::fmt::Display| ChartError { path: path.display().to_string(), message: e.to_string() };
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(fail(&"nothing to draw"));
    }
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(550);

    // Concurrency on a log2 axis (hundredths of a power of two, so that
    // plotters' integer axis can carry it), labelled at the values measured.
    let xs: Vec<i32> = {
        let mut xs: Vec<i32> = series.iter().flat_map(|s| s.points.iter().map(|p| log_x(p.0))).collect();
        xs.sort_unstable();
        xs.dedup();
        xs
    };
    let (x_min, x_max) = (xs.first().copied().unwrap_or(0), xs.last().copied().unwrap_or(100));
    let x_range = || (x_min - 30..x_max + 30).with_key_points(xs.clone());
    let x_label = |x: &i32| format!("{}", 2f64.powf(f64::from(*x) / 100.0).round());

    let max_rate = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput (calls/s)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(), 0.0..max_rate * 1.1)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc("calls/s")
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    for (s, color) in series.iter().zip(COLORS) {
        let points: Vec<(i32, f64)> = s.points.iter().map(|p| (log_x(p.0), p.1)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;

    // p99 spans orders of magnitude from concurrency 1 to 256: log scale.
    let p99s = || series.iter().flat_map(|s| s.points.iter().map(|p| p.2)).filter(|v| *v > 0.0);
    let (p_min, p_max) = (p99s().fold(f64::MAX, f64::min), p99s().fold(0.0, f64::max));
    let (p_min, p_max) = if p_max > 0.0 { (p_min / 1.5, p_max * 1.5) } else { (0.1, 1.0) };
    let mut chart = ChartBuilder::on(&right)
        .caption("p99 latency (ms, log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range(), (p_min..p_max).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc("p99 (ms)")
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .draw()
        .map_err(|e| fail(&e))?;
    for (s, color) in series.iter().zip(COLORS) {
        let points: Vec<(i32, f64)> = s.points.iter().filter(|p| p.2 > 0.0).map(|p| (log_x(p.0), p.2)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Concurrency's place on the x axis: log2, in hundredths.
fn log_x(concurrency: usize) -> i32 {
    ((concurrency.max(1) as f64).log2() * 100.0).round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_without_fonts() {
        let dir = std::env::temp_dir().join(testkit::unique("chart"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let series = [
            Series { name: "gateway", points: vec![(1, 900.0, 1.2), (16, 5000.0, 6.0), (256, 7000.0, 80.0)] },
            Series { name: "raw-amqp", points: vec![(1, 1200.0, 0.9), (16, 7000.0, 4.0), (256, 9000.0, 60.0)] },
        ];
        draw(&path, "test", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("gateway") && svg.contains("raw-amqp"), "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
