//! Charts as inline SVG, drawn on the server: no script, no inline style (the
//! console's CSP allows neither), colours from `console.css` classes. Every chart
//! carries its numbers as text too: an `aria-label` summing it up and a table.

use super::esc;

/// Series colours (`.s0` … `.s7` in `console.css`), reused past eight.
const PALETTE: usize = 8;

/// Chart area inside the SVG's view box.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 104.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 20.0;

/// A stacked bar chart.
pub(super) struct Stacked<'a> {
    /// `id` of the figure (its table and label hang off it).
    pub(super) id: &'a str,
    pub(super) title: &'a str,
    /// The series, bottom first.
    pub(super) series: Vec<String>,
    /// Each bar: its label and one value per series.
    pub(super) bars: Vec<(String, Vec<u64>)>,
    /// A limit drawn across the bars, with its label.
    pub(super) line: Option<(u64, String)>,
    /// How a value reads (`$1.50`, `3`).
    pub(super) format: &'a dyn Fn(u64) -> String,
    /// Label every n-th bar on the axis.
    pub(super) label_every: usize,
    /// The series' colour classes (`s0` …), when they mean something (allow/hold/deny).
    pub(super) classes: Option<Vec<&'a str>>,
    /// Side by side instead of stacked.
    pub(super) grouped: bool,
}

impl Stacked<'_> {
    fn class(&self, i: usize) -> String {
        match &self.classes {
            Some(c) => c
                .get(i)
                .map_or_else(|| format!("s{}", i % PALETTE), |c| (*c).to_owned()),
            None => format!("s{}", i % PALETTE),
        }
    }

    /// The chart, its legend and its table.
    pub(super) fn render(&self) -> String {
        let totals: Vec<u64> = self
            .bars
            .iter()
            .map(|(_, v)| {
                if self.grouped {
                    v.iter().copied().max().unwrap_or(0)
                } else {
                    v.iter().sum()
                }
            })
            .collect();
        let top = totals
            .iter()
            .copied()
            .chain(self.line.as_ref().map(|(v, _)| *v))
            .max()
            .unwrap_or(0)
            .max(1);
        let plot_h = HEIGHT - BOTTOM - TOP;
        let y = |v: u64| TOP + plot_h - (v as f64 / top as f64) * plot_h;
        let slot = (WIDTH - LEFT) / self.bars.len().max(1) as f64;
        let bar_w = (slot * 0.8).max(1.0);
        let mut svg = String::new();
        // Axis: zero and the top value.
        svg.push_str(&format!(
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{WIDTH}\" y2=\"{b:.1}\"/>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"{b:.1}\" text-anchor=\"end\">{}</text>\
             <text class=\"tick\" x=\"{tx:.1}\" y=\"{t:.1}\" text-anchor=\"end\">{}</text>",
            esc(&(self.format)(0)),
            esc(&(self.format)(top)),
            b = y(0),
            t = y(top) + 10.0,
            tx = LEFT - 6.0,
        ));
        for (i, (label, values)) in self.bars.iter().enumerate() {
            let x = LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
            let mut base = 0;
            let per = if self.grouped {
                bar_w / values.len().max(1) as f64
            } else {
                bar_w
            };
            for (s, value) in values.iter().enumerate() {
                if *value == 0 {
                    continue;
                }
                let (x0, from) = if self.grouped {
                    (x + s as f64 * per, 0)
                } else {
                    (x, base)
                };
                let (y0, y1) = (y(from + value), y(from));
                svg.push_str(&format!(
                    "<rect class=\"{}\" x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{per:.1}\" height=\"{:.1}\">\
                     <title>{}: {} {}</title></rect>",
                    self.class(s),
                    (y1 - y0).max(0.5),
                    esc(label),
                    esc(self.series.get(s).map_or("", String::as_str)),
                    esc(&(self.format)(*value)),
                ));
                base += value;
            }
            if self.label_every > 0 && (i % self.label_every == 0 || i + 1 == self.bars.len()) {
                svg.push_str(&format!(
                    "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    x + bar_w / 2.0,
                    HEIGHT - 6.0,
                    esc(label)
                ));
            }
        }
        if let Some((limit, name)) = &self.line {
            svg.push_str(&format!(
                "<line class=\"limit\" x1=\"{LEFT}\" y1=\"{v:.1}\" x2=\"{WIDTH}\" y2=\"{v:.1}\"/>\
                 <text class=\"tick limit-label\" x=\"{WIDTH}\" y=\"{t:.1}\" text-anchor=\"end\">{}</text>",
                esc(&format!("{name} {}", (self.format)(*limit))),
                v = y(*limit),
                t = y(*limit) - 4.0,
            ));
        }
        let grand: u64 = self.bars.iter().flat_map(|(_, v)| v.iter()).sum();
        let peak = self
            .bars
            .iter()
            .zip(&totals)
            .max_by_key(|(_, t)| **t)
            .filter(|(_, t)| **t > 0);
        let mut label = format!("{}: ", self.title);
        if self.grouped {
            let sums: Vec<String> = (0..self.series.len())
                .map(|s| {
                    let sum: u64 = self
                        .bars
                        .iter()
                        .map(|(_, v)| v.get(s).copied().unwrap_or(0))
                        .sum();
                    format!("{} {}", self.series[s], (self.format)(sum))
                })
                .collect();
            label.push_str(&sums.join(", "));
        } else {
            label.push_str(&format!("total {}", (self.format)(grand)));
            if let Some(((at, _), t)) = peak {
                label.push_str(&format!(", highest {} ({at})", (self.format)(*t)));
            }
        }
        if let Some((limit, name)) = &self.line {
            label.push_str(&format!("; {name} {}", (self.format)(*limit)));
        }
        label.push_str(". The table below lists every value.");
        let legend: String = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "<li><svg class=\"swatch\" viewBox=\"0 0 10 10\" aria-hidden=\"true\">\
                     <rect class=\"{}\" width=\"10\" height=\"10\"/></svg>{}</li>",
                    self.class(i),
                    esc(s)
                )
            })
            .collect();
        format!(
            "<figure class=\"chart\" id=\"{id}\"><figcaption>{title}</figcaption>\
             <svg role=\"img\" aria-label=\"{label}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
             preserveAspectRatio=\"xMinYMin meet\">{svg}</svg>\
             <ul class=\"chart-legend\">{legend}</ul>{table}</figure>",
            id = esc(self.id),
            title = esc(self.title),
            label = esc(&label),
            table = self.table(&totals),
        )
    }

    /// The chart's numbers as a table (in a disclosure, under the chart).
    fn table(&self, totals: &[u64]) -> String {
        let mut head = String::from("<th scope=\"col\">When</th>");
        for s in &self.series {
            head.push_str(&format!("<th scope=\"col\">{}</th>", esc(s)));
        }
        if !self.grouped {
            head.push_str("<th scope=\"col\">Total</th>");
        }
        let mut rows = String::new();
        for ((label, values), total) in self.bars.iter().zip(totals) {
            rows.push_str(&format!("<tr><th scope=\"row\">{}</th>", esc(label)));
            for v in values {
                rows.push_str(&format!(
                    "<td class=\"num\">{}</td>",
                    esc(&(self.format)(*v))
                ));
            }
            if !self.grouped {
                rows.push_str(&format!(
                    "<td class=\"num\">{}</td>",
                    esc(&(self.format)(*total))
                ));
            }
            rows.push_str("</tr>");
        }
        format!(
            "<details class=\"chart-data\"><summary>{} as a table</summary>\
             <table id=\"{}-table\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></details>",
            esc(self.title),
            esc(self.id)
        )
    }
}

/// A small horizontal meter (0–100 %) with its text beside it.
pub(super) fn meter(percent: f64, text: &str) -> String {
    let width = percent.clamp(0.0, 100.0);
    let class = match percent {
        p if p >= 90.0 => "hot",
        p if p >= 70.0 => "warm",
        _ => "cool",
    };
    format!(
        "<svg class=\"meter\" viewBox=\"0 0 100 8\" preserveAspectRatio=\"none\" aria-hidden=\"true\">\
         <rect class=\"track\" width=\"100\" height=\"8\"/>\
         <rect class=\"{class}\" width=\"{width:.2}\" height=\"8\"/></svg> <span>{}</span>",
        esc(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart<'a>(format: &'a dyn Fn(u64) -> String) -> Stacked<'a> {
        Stacked {
            id: "spend",
            title: "Spend <per> day",
            series: vec!["a<b>".to_owned(), "c".to_owned()],
            bars: vec![
                ("d1".to_owned(), vec![100, 50]),
                ("d2".to_owned(), vec![0, 0]),
                ("d3".to_owned(), vec![300, 0]),
            ],
            line: Some((400, "cap".to_owned())),
            format,
            label_every: 1,
            classes: None,
            grouped: false,
        }
    }

    #[test]
    fn a_chart_says_its_numbers_and_escapes_its_names() {
        let format = |v: u64| format!("{v}c");
        let html = chart(&format).render();
        assert!(html.contains(
            "aria-label=\"Spend &lt;per&gt; day: total 450c, highest 300c (d3); cap 400c."
        ));
        assert!(!html.contains("a<b>"), "{html}");
        assert!(html.contains("a&lt;b&gt;"));
        // The table has a row per bar with each series and the total.
        assert!(html.contains("<th scope=\"row\">d1</th><td class=\"num\">100c</td><td class=\"num\">50c</td><td class=\"num\">150c</td>"));
        assert!(html.contains("<th scope=\"row\">d2</th><td class=\"num\">0c</td>"));
        // Two non-zero segments in d1, one in d3, none in d2; the cap line.
        assert_eq!(html.matches("<rect class=\"s0\" x=").count(), 2);
        assert_eq!(html.matches("<rect class=\"s1\" x=").count(), 1);
        assert!(html.contains("<line class=\"limit\""));
    }

    #[test]
    fn the_tallest_bar_reaches_the_top_and_the_limit_scales_with_it() {
        let format = |v: u64| v.to_string();
        let mut c = chart(&format);
        c.line = None;
        let html = c.render();
        // 300 is the top: its bar starts at TOP.
        assert!(html.contains(&format!("y=\"{TOP:.1}\" width=")), "{html}");
        c.line = Some((600, "cap".to_owned()));
        let html = c.render();
        // Now the cap is the top and the 300 bar reaches half way.
        let half = TOP + (HEIGHT - BOTTOM - TOP) / 2.0;
        assert!(html.contains(&format!("y=\"{half:.1}\" width=")), "{html}");
    }
}
