//! SVG line charts of the comparison (plotters, SVG backend only), written
//! only when asked (`--charts <dir>`).

use std::path::Path;

use plotters::prelude::*;

use super::systems::{Class, Config};

/// The series each workload collects, per configuration.
#[derive(Default)]
pub struct Data {
    /// (producers, messages/s).
    pub throughput: Vec<(Config, Vec<(f64, f64)>)>,
    /// (pending messages, VmRSS MiB).
    pub memory: Vec<(Config, Vec<(f64, f64)>)>,
    /// (messages pushed so far, MiB on disk).
    pub disk: Vec<(Config, Vec<(f64, f64)>)>,
}

const COLORS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

struct Spec<'a> {
    file: &'a str,
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    log_y: bool,
}

/// Writes every chart that has data into `dir`.
pub fn write_all(dir: &Path, data: &Data) {
    std::fs::create_dir_all(dir).expect("charts dir");
    for class in [Class::Sync, Class::Buffered] {
        let series: Vec<_> = data
            .throughput
            .iter()
            .filter(|(c, _)| c.class == class)
            .cloned()
            .collect();
        let (file, title) = match class {
            Class::Sync => (
                "compare-throughput-sync.svg",
                "push 100 B: throughput vs producers (per-op durability)",
            ),
            Class::Buffered => (
                "compare-throughput-buffered.svg",
                "push 100 B: throughput vs producers (buffered, no fsync per op)",
            ),
        };
        draw(
            dir,
            &Spec {
                file,
                title,
                x_label: "producers",
                y_label: "messages/s",
                log_x: true,
                log_y: true,
            },
            &series,
        );
    }
    draw(
        dir,
        &Spec {
            file: "compare-memory.svg",
            title: "resident memory (VmRSS) vs pending messages (100 B)",
            x_label: "pending messages",
            y_label: "VmRSS, MiB",
            log_x: true,
            log_y: true,
        },
        &data.memory,
    );
    draw(
        dir,
        &Spec {
            file: "compare-disk.svg",
            title: "bytes on disk during a steady push + ack run (last point: after compaction)",
            x_label: "messages pushed (and acked)",
            y_label: "MiB on disk",
            log_x: false,
            log_y: false,
        },
        &data.disk,
    );
}

/// 1.5M, 20k, 64, 0.25: short axis labels.
fn axis_number(v: f64) -> String {
    let one_decimal = |x: f64| {
        let s = format!("{x:.1}");
        s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
    };
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", one_decimal(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", one_decimal(v / 1e3))
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn label(c: &Config) -> String {
    format!("{} ({})", c.name(), c.durability())
}

fn draw(dir: &Path, spec: &Spec<'_>, series: &[(Config, Vec<(f64, f64)>)]) {
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return;
    }
    if spec.log_y {
        y0 = (y0 / 2.0).max(1e-3);
        y1 *= 2.0;
    } else {
        y0 = 0.0;
        y1 = y1 * 1.1 + 1.0;
    }
    if spec.log_x {
        x0 = (x0 / 1.5).max(1e-3);
        x1 *= 1.5;
    } else {
        x0 = 0.0;
        x1 = x1 * 1.02 + 1.0;
    }
    let path = dir.join(spec.file);
    let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(spec.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    // Four combinations of linear and log axes, one code path each.
    macro_rules! plot {
        ($xr:expr, $yr:expr) => {{
            let mut chart = builder.build_cartesian_2d($xr, $yr).expect("axes");
            chart
                .configure_mesh()
                .x_desc(spec.x_label)
                .y_desc(spec.y_label)
                .x_label_formatter(&|v| axis_number(*v))
                .y_label_formatter(&|v| axis_number(*v))
                .draw()
                .expect("mesh");
            for (i, (cfg, s)) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
                    .expect("series")
                    .label(label(cfg))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(s.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .expect("points");
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .expect("legend");
        }};
    }
    match (spec.log_x, spec.log_y) {
        (true, true) => plot!((x0..x1).log_scale(), (y0..y1).log_scale()),
        (true, false) => plot!((x0..x1).log_scale(), y0..y1),
        (false, true) => plot!(x0..x1, (y0..y1).log_scale()),
        (false, false) => plot!(x0..x1, y0..y1),
    }
    root.present().expect("write svg");
    println!("chart: {}", path.display());
}
