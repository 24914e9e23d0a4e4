//! The invoice PDF layout (printpdf 0.12's op-based API).
//!
//! A4 pages: the seller and invoice facts on every page, the customer block on the first, a
//! table of lines that flows onto further pages with its header repeated, totals on the last,
//! and "Page i of n" at the foot. Pagination is decided before any page is drawn, so every page
//! knows n. Text is set in DejaVu Sans, embedded (subset) into each PDF, so accented names,
//! Polish letters and the euro sign render anywhere.

use anyhow::Context;
use chrono::NaiveDate;
use printpdf::{
    Color, FontId, Line, LinePoint, Mm, Op, PaintMode, ParsedFont, PdfDocument, PdfFontHandle,
    PdfPage, PdfSaveOptions, Point, Pt, Rect, Rgb, TextItem,
};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const REGULAR: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
const BOLD: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold.ttf");

/// An invoice's content, every figure already formatted from the stored decimals.
#[derive(Debug, Clone)]
pub struct InvoiceDocument {
    pub seller: String,
    pub number: String,
    pub issued_on: NaiveDate,
    pub order_number: String,
    pub customer_name: String,
    pub customer_email: String,
    pub customer_address: Option<String>,
    pub currency: String,
    pub tax_rate_percent: String,
    pub lines: Vec<InvoiceLine>,
    pub subtotal: String,
    pub tax: String,
    pub total: String,
}

#[derive(Debug, Clone)]
pub struct InvoiceLine {
    pub sku: String,
    pub description: String,
    pub quantity: String,
    pub unit_price: String,
    pub line_total: String,
}

/// The two faces, parsed once per process (from the binary, or from
/// `BACKROOM_INVOICE_FONT_DIR`; a directory that fails to load is retried on the next job).
pub struct Fonts {
    dir: Option<PathBuf>,
    parsed: OnceLock<Arc<(ParsedFont, ParsedFont)>>,
}

impl Fonts {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Fonts {
            dir,
            parsed: OnceLock::new(),
        }
    }

    fn get(&self) -> anyhow::Result<Arc<(ParsedFont, ParsedFont)>> {
        if let Some(p) = self.parsed.get() {
            return Ok(p.clone());
        }
        let (regular, bold) = match &self.dir {
            None => (REGULAR.to_vec(), BOLD.to_vec()),
            Some(dir) => {
                let read = |name: &str| {
                    let path = dir.join(name);
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read font {}", path.display()))
                };
                (read("DejaVuSans.ttf")?, read("DejaVuSans-Bold.ttf")?)
            }
        };
        let parse = |bytes: &[u8], which: &str| {
            ParsedFont::from_bytes(bytes, 0, &mut vec![])
                .with_context(|| format!("the {which} font is not a usable TrueType font"))
        };
        let pair = Arc::new((parse(&regular, "regular")?, parse(&bold, "bold")?));
        Ok(self.parsed.get_or_init(|| pair).clone())
    }
}

// Layout, in millimetres from the bottom-left corner of an A4 page.
const PAGE_W: f32 = 210.0;
const PAGE_H: f32 = 297.0;
const LEFT: f32 = 18.0;
const RIGHT: f32 = PAGE_W - 18.0;
const ROW_H: f32 = 6.4;
/// Where the table starts on the first page (below the customer block) and on later ones.
const TABLE_TOP_FIRST: f32 = 200.0;
const TABLE_TOP_NEXT: f32 = 240.0;
/// The table never runs below this (room for the footer)...
const TABLE_BOTTOM: f32 = 28.0;
/// ...and the last page keeps this much under the table for the totals.
const TOTALS_H: f32 = 30.0;
/// Column x positions: SKU, description, then right edges of quantity, unit price, total.
const COL_SKU: f32 = LEFT + 2.0;
const COL_DESC: f32 = LEFT + 36.0;
const COL_QTY_R: f32 = 128.0;
const COL_PRICE_R: f32 = 158.0;
const COL_TOTAL_R: f32 = RIGHT - 2.0;

fn rows_fitting(top: f32, bottom: f32) -> usize {
    // The header row takes the first slot.
    (((top - bottom) / ROW_H).floor() as usize).saturating_sub(1)
}

/// Splits the lines into pages: (first line, line count) per page. The last page always has
/// room for the totals (if they do not fit, they get a page of their own).
fn paginate(n: usize) -> Vec<(usize, usize)> {
    let mut pages = vec![];
    let mut start = 0;
    let mut first = true;
    loop {
        let top = if first {
            TABLE_TOP_FIRST
        } else {
            TABLE_TOP_NEXT
        };
        let fits = rows_fitting(top, TABLE_BOTTOM);
        let fits_with_totals = rows_fitting(top, TABLE_BOTTOM + TOTALS_H);
        let left = n - start;
        if left <= fits_with_totals {
            pages.push((start, left));
            return pages;
        }
        let take = left.min(fits);
        pages.push((start, take));
        start += take;
        first = false;
    }
}

struct Painter<'a> {
    ops: Vec<Op>,
    regular: &'a ParsedFont,
    bold: &'a ParsedFont,
    regular_id: FontId,
    bold_id: FontId,
}

fn grey(level: f32) -> Color {
    Color::Rgb(Rgb::new(level, level, level, None))
}

impl Painter<'_> {
    fn width_mm(&self, text: &str, size: f32, bold: bool) -> f32 {
        let font = if bold { self.bold } else { self.regular };
        let units_per_em = font.pdf_font_metrics.units_per_em.max(1) as u32;
        // The viewer advances by the PDF's /W widths, which printpdf writes as
        // trunc(advance·1000/units_per_em); summing the same values lands right edges exactly.
        let thousandths: u32 = text
            .chars()
            .map(|c| {
                let advance = font
                    .lookup_glyph_index(c as u32)
                    .map(|g| font.get_horizontal_advance(g) as u32)
                    .unwrap_or(units_per_em / 2);
                advance * 1000 / units_per_em
            })
            .sum();
        let pt = thousandths as f32 * size / 1000.0;
        pt * 25.4 / 72.0
    }

    fn text(&mut self, text: &str, x: f32, y: f32, size: f32, bold: bool) {
        let font = if bold {
            &self.bold_id
        } else {
            &self.regular_id
        };
        self.ops.extend([
            Op::StartTextSection,
            Op::SetFont {
                font: PdfFontHandle::External(font.clone()),
                size: Pt(size),
            },
            Op::SetTextCursor {
                pos: Point {
                    x: Mm(x).into(),
                    y: Mm(y).into(),
                },
            },
            Op::ShowText {
                items: vec![TextItem::Text(text.to_string())],
            },
            Op::EndTextSection,
        ]);
    }

    fn text_right(&mut self, text: &str, right: f32, y: f32, size: f32, bold: bool) {
        let w = self.width_mm(text, size, bold);
        self.text(text, right - w, y, size, bold);
    }

    /// Text cut to `max` millimetres with an ellipsis.
    fn fit(&self, text: &str, max: f32, size: f32) -> String {
        if self.width_mm(text, size, false) <= max {
            return text.to_string();
        }
        let mut cut: String = text.to_string();
        while !cut.is_empty() && self.width_mm(&format!("{cut}…"), size, false) > max {
            cut.pop();
        }
        format!("{cut}…")
    }

    fn rule(&mut self, x1: f32, x2: f32, y: f32, thickness: f32, shade: f32) {
        let point = |x: f32| LinePoint {
            p: Point {
                x: Mm(x).into(),
                y: Mm(y).into(),
            },
            bezier: false,
        };
        self.ops.extend([
            Op::SetOutlineColor { col: grey(shade) },
            Op::SetOutlineThickness { pt: Pt(thickness) },
            Op::DrawLine {
                line: Line {
                    points: vec![point(x1), point(x2)],
                    is_closed: false,
                },
            },
        ]);
    }

    fn band(&mut self, x: f32, y: f32, w: f32, h: f32, shade: f32) {
        self.ops.extend([
            Op::SetFillColor { col: grey(shade) },
            Op::DrawRectangle {
                rectangle: Rect {
                    x: Mm(x).into(),
                    y: Mm(y).into(),
                    width: Mm(w).into(),
                    height: Mm(h).into(),
                    mode: Some(PaintMode::Fill),
                    winding_order: None,
                },
            },
            Op::SetFillColor { col: grey(0.0) },
        ]);
    }
}

/// Renders the invoice to PDF bytes.
/// Renders the invoice; gives up between pages once `stop()` says so (its job timed out).
pub fn render(
    doc: &InvoiceDocument,
    fonts: &Fonts,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<u8>> {
    let faces = fonts.get()?;
    let (regular, bold) = (&faces.0, &faces.1);
    let mut pdf = PdfDocument::new(&format!("Invoice {}", doc.number));
    let regular_id = pdf.add_font(regular);
    let bold_id = pdf.add_font(bold);
    let pages = paginate(doc.lines.len());
    let page_count = pages.len();
    let mut rendered = Vec::with_capacity(page_count);
    for (index, &(start, count)) in pages.iter().enumerate() {
        anyhow::ensure!(!stop(), crate::queue::cancel::Cancelled);
        let mut p = Painter {
            ops: vec![],
            regular,
            bold,
            regular_id: regular_id.clone(),
            bold_id: bold_id.clone(),
        };
        p.heading(doc);
        let top = if index == 0 {
            p.customer(doc);
            TABLE_TOP_FIRST
        } else {
            TABLE_TOP_NEXT
        };
        let y = p.table(doc, &doc.lines[start..start + count], top);
        if index + 1 == page_count {
            p.totals(doc, y);
        }
        p.footer(doc, index + 1, page_count);
        rendered.push(PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), p.ops));
    }
    pdf.with_pages(rendered);
    let mut warnings = vec![];
    // Streams left uncompressed by printpdf and compressed below at DEFLATE_LEVEL.
    let options = PdfSaveOptions {
        optimize: false,
        ..PdfSaveOptions::default()
    };
    let mut document = printpdf::to_lopdf_doc(&pdf, &options, &mut warnings);
    compress_streams(&mut document);
    let mut bytes = Vec::with_capacity(64 * 1024);
    document.save_to(&mut bytes).context("writing the PDF")?;
    anyhow::ensure!(!bytes.is_empty(), "printpdf produced an empty document");
    Ok(bytes)
}

/// The parts of a page, top to bottom.
impl Painter<'_> {
    /// The seller, the invoice's number and dates: on every page.
    fn heading(&mut self, doc: &InvoiceDocument) {
        // Heading, on every page.
        self.band(0.0, PAGE_H - 38.0, PAGE_W, 38.0, 0.93);
        self.text(&doc.seller, LEFT, PAGE_H - 20.0, 16.0, true);
        self.text_right("INVOICE", RIGHT, PAGE_H - 20.0, 16.0, true);
        self.text_right(
            &format!("No. {}", doc.number),
            RIGHT,
            PAGE_H - 27.0,
            10.0,
            false,
        );
        self.text_right(
            &format!("Issued {}", doc.issued_on.format("%Y-%m-%d")),
            RIGHT,
            PAGE_H - 32.0,
            10.0,
            false,
        );
        self.text(
            &format!("Order {}", doc.order_number),
            LEFT,
            PAGE_H - 27.0,
            10.0,
            false,
        );
    }

    /// The customer: on the first page.
    fn customer(&mut self, doc: &InvoiceDocument) {
        // The customer, on the first page.
        self.text("Bill to", LEFT, PAGE_H - 50.0, 9.0, true);
        let mut y = PAGE_H - 56.0;
        let mut block = vec![doc.customer_name.clone(), doc.customer_email.clone()];
        if let Some(address) = &doc.customer_address {
            block.extend(address.lines().take(5).map(str::to_string));
        }
        for line in block {
            let line = self.fit(&line, 110.0, 10.0);
            self.text(&line, LEFT, y, 10.0, false);
            y -= 5.0;
        }
    }

    /// The table header and `lines` from `top` down; returns where the table ends.
    fn table(&mut self, doc: &InvoiceDocument, lines: &[InvoiceLine], top: f32) -> f32 {
        // Table header, repeated on every page.
        let mut y = top;
        self.band(LEFT, y - ROW_H + 1.5, RIGHT - LEFT, ROW_H, 0.85);
        let header_y = y - ROW_H + 3.2;
        self.text("SKU", COL_SKU, header_y, 9.0, true);
        self.text("Description", COL_DESC, header_y, 9.0, true);
        self.text_right("Qty", COL_QTY_R, header_y, 9.0, true);
        self.text_right("Unit price", COL_PRICE_R, header_y, 9.0, true);
        self.text_right(
            &format!("Total {}", doc.currency),
            COL_TOTAL_R,
            header_y,
            9.0,
            true,
        );
        y -= ROW_H;
        for line in lines {
            let row_y = y - ROW_H + 2.2;
            let sku = self.fit(&line.sku, COL_DESC - COL_SKU - 2.0, 9.0);
            self.text(&sku, COL_SKU, row_y, 9.0, false);
            let description = self.fit(&line.description, COL_QTY_R - 14.0 - COL_DESC, 9.0);
            self.text(&description, COL_DESC, row_y, 9.0, false);
            self.text_right(&line.quantity, COL_QTY_R, row_y, 9.0, false);
            self.text_right(&line.unit_price, COL_PRICE_R, row_y, 9.0, false);
            self.text_right(&line.line_total, COL_TOTAL_R, row_y, 9.0, false);
            y -= ROW_H;
            self.rule(LEFT, RIGHT, y + 0.5, 0.3, 0.8);
        }
        y
    }

    /// Subtotal, tax and total below the table: on the last page.
    fn totals(&mut self, doc: &InvoiceDocument, y: f32) {
        // Totals, on the last page.
        let mut ty = y - 8.0;
        for (label, value, strong) in [
            ("Subtotal".to_string(), &doc.subtotal, false),
            (format!("Tax ({} %)", doc.tax_rate_percent), &doc.tax, false),
            (format!("Total {}", doc.currency), &doc.total, true),
        ] {
            if strong {
                self.rule(COL_QTY_R, RIGHT, ty + 4.6, 0.8, 0.2);
            }
            let size = if strong { 11.0 } else { 10.0 };
            self.text_right(&label, COL_PRICE_R, ty, size, strong);
            self.text_right(value, COL_TOTAL_R, ty, size, strong);
            ty -= 6.5;
        }
    }

    fn footer(&mut self, doc: &InvoiceDocument, page: usize, page_count: usize) {
        // Footer.
        self.rule(LEFT, RIGHT, 18.0, 0.4, 0.7);
        self.text(
            &format!("{} · Invoice {}", doc.seller, doc.number),
            LEFT,
            12.0,
            8.0,
            false,
        );
        self.text_right(
            &format!("Page {} of {page_count}", page),
            RIGHT,
            12.0,
            8.0,
            false,
        );
    }
}

/// zlib level for the PDF's streams (the embedded font subsets and the page contents).
/// printpdf's `optimize` compresses at level 9, which took about 40 % of the invoice worker's
/// CPU (perf, `benches/invoices`); level 6 costs a fraction of that for nearly the same size.
const DEFLATE_LEVEL: u32 = 1;

/// Compresses every stream that may be compressed and is not yet, as `lopdf`'s own
/// `Document::compress` does, at [`DEFLATE_LEVEL`].
fn compress_streams(document: &mut lopdf::Document) {
    use std::io::Write;
    for object in document.objects.values_mut() {
        let lopdf::Object::Stream(stream) = object else {
            continue;
        };
        if !stream.allows_compression || stream.dict.get(b"Filter").is_ok() {
            continue;
        }
        let mut encoder = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(stream.content.len() / 2),
            flate2::Compression::new(DEFLATE_LEVEL),
        );
        let packed = encoder
            .write_all(&stream.content)
            .and_then(|_| encoder.finish());
        // Kept only when it saves more than the filter entry costs (as lopdf does).
        if let Ok(packed) = packed
            && packed.len() + 19 < stream.content.len()
        {
            stream.dict.set("Filter", "FlateDecode");
            stream.set_content(packed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_keeps_every_line_once_and_leaves_room_for_totals() {
        for n in [0, 1, 10, 24, 25, 26, 60, 150, 500] {
            let pages = paginate(n);
            let covered: usize = pages.iter().map(|(_, c)| c).sum();
            assert_eq!(covered, n, "{n} lines");
            let mut next = 0;
            for (start, count) in &pages {
                assert_eq!(*start, next);
                next += count;
            }
            let (_, last) = *pages.last().unwrap();
            let top = if pages.len() == 1 {
                TABLE_TOP_FIRST
            } else {
                TABLE_TOP_NEXT
            };
            assert!(
                last <= rows_fitting(top, TABLE_BOTTOM + TOTALS_H),
                "{n}: totals fit"
            );
        }
        assert!(paginate(150).len() >= 4, "150 lines span several pages");
    }

    /// A render whose job timed out stops at the next page instead of finishing the document.
    #[test]
    fn a_render_stops_between_pages_once_told() {
        let line = InvoiceLine {
            sku: "MUG-1".into(),
            description: "Mug".into(),
            quantity: "1".into(),
            unit_price: "5.00".into(),
            line_total: "5.00".into(),
        };
        let doc = InvoiceDocument {
            seller: "Shop".into(),
            number: "INV-1".into(),
            issued_on: NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
            order_number: "1".into(),
            customer_name: "Ann".into(),
            customer_email: "ann@example.org".into(),
            customer_address: None,
            currency: "EUR".into(),
            tax_rate_percent: "0".into(),
            lines: vec![line; 500],
            subtotal: "2500.00".into(),
            tax: "0.00".into(),
            total: "2500.00".into(),
        };
        let fonts = Fonts::new(None);
        let pages_started = std::sync::atomic::AtomicUsize::new(0);
        let stop_after_two =
            || pages_started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 2;
        let err = render(&doc, &fonts, &stop_after_two).unwrap_err();
        assert!(err.is::<crate::queue::cancel::Cancelled>(), "{err:#}");
        assert_eq!(
            pages_started.into_inner(),
            3,
            "asked once per page until told"
        );
        assert!(
            render(&doc, &fonts, &|| false)
                .unwrap()
                .starts_with(b"%PDF")
        );
    }
}
