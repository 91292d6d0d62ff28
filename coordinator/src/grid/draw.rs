//! A1111's grid drawing (`modules/images.py`): `image_grid`, `draw_grid_annotations` with
//! wrapping and shrinking legend text, and struck-through inactive prompt-matrix labels.
//! Text is measured and rasterised with `ab_glyph` from the DejaVu Sans font carried in
//! `assets/fonts` (A1111 ships Roboto; the glyph shapes differ, the layout rules do not).

use std::sync::LazyLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{imageops, Rgb, RgbImage};

static FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../../assets/fonts/DejaVuSans.ttf"))
        .expect("the bundled font parses")
});

/// A1111's default grid colours (`grid_text_active_color`, `grid_text_inactive_color`,
/// `grid_background_color`).
pub const ACTIVE: Rgb<u8> = Rgb([0, 0, 0]);
pub const INACTIVE: Rgb<u8> = Rgb([0x99, 0x99, 0x99]);
pub const BACKGROUND: Rgb<u8> = Rgb([0xff, 0xff, 0xff]);

/// One legend line (`GridAnnotation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub text: String,
    pub active: bool,
}

impl Annotation {
    pub fn new(text: impl Into<String>) -> Annotation {
        Annotation {
            text: text.into(),
            active: true,
        }
    }
}

/// `image_grid(imgs, rows=rows)`: `cols = ceil(n / rows)`, every cell the size of the largest
/// image, smaller images centred.
pub fn image_grid(images: &[RgbImage], rows: usize) -> RgbImage {
    let rows = rows.clamp(1, images.len().max(1));
    let cols = images.len().div_ceil(rows);
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut grid = RgbImage::from_pixel(cols as u32 * w, rows as u32 * h, BACKGROUND);
    for (i, img) in images.iter().enumerate() {
        let x = (i % cols) as u32 * w + (w - img.width()) / 2;
        let y = (i / cols) as u32 * h + (h - img.height()) / 2;
        imageops::replace(&mut grid, img, i64::from(x), i64::from(y));
    }
    grid
}

/// `image_grid(imgs, batch_size)` with A1111's default `n_rows = -1`: `round(sqrt(n))` rows.
pub fn auto_rows(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).max(1)
}

/// A1111's legend font size for cells of `width` x `height`.
pub fn font_size(width: u32, height: u32) -> u32 {
    (width + height) / 25
}

/// `ImageDraw.textlength`: the advance width of `text`.
fn text_length(text: &str, size: f32) -> f32 {
    let font = FONT.as_scaled(PxScale::from(size));
    let mut width = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = prev {
            width += font.kern(p, id);
        }
        width += font.h_advance(id);
        prev = Some(id);
    }
    width
}

/// `textbbox` size of one line: advance width, and the ink height measured from the
/// ascender line (PIL's default "la" anchor), so lines of one font size line up.
pub fn text_size(text: &str, size: u32) -> (u32, u32) {
    let scaled = FONT.as_scaled(PxScale::from(size as f32));
    let ascent = scaled.ascent();
    let mut bottom: f32 = 0.0;
    let mut x = 0.0;
    for c in text.chars() {
        let glyph = scaled.scaled_glyph(c);
        let advance = scaled.h_advance(glyph.id);
        let mut g = glyph;
        g.position = point(x, ascent);
        if let Some(outlined) = scaled.outline_glyph(g) {
            bottom = bottom.max(outlined.px_bounds().max.y);
        }
        x += advance;
    }
    (
        text_length(text, size as f32).ceil() as u32,
        bottom.ceil() as u32,
    )
}

/// A1111's `wrap`: greedy, at whitespace, a word longer than the width on a line of its own.
fn wrap(text: &str, size: u32, width: u32) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last().expect("never empty");
        let line = format!("{last} {word}").trim().to_string();
        if text_length(&line, size as f32) <= width as f32 {
            *lines.last_mut().expect("never empty") = line;
        } else {
            lines.push(word.to_string());
        }
    }
    lines
}

/// Draws `text` centred on `(cx, cy)` (PIL's "mm" anchor).
fn draw_text(img: &mut RgbImage, text: &str, size: u32, cx: f32, cy: f32, color: Rgb<u8>) {
    let scaled = FONT.as_scaled(PxScale::from(size as f32));
    let baseline = cy + (scaled.ascent() + scaled.descent()) / 2.0;
    let mut x = cx - text_length(text, size as f32) / 2.0;
    for c in text.chars() {
        let mut glyph = scaled.scaled_glyph(c);
        glyph.position = point(x, baseline);
        x += scaled.h_advance(glyph.id);
        let Some(outlined) = scaled.outline_glyph(glyph) else {
            continue;
        };
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let (px, py) = (
                b.min.x as i64 + i64::from(gx),
                b.min.y as i64 + i64::from(gy),
            );
            if px < 0 || py < 0 || px >= i64::from(img.width()) || py >= i64::from(img.height()) {
                return;
            }
            let pixel = img.get_pixel_mut(px as u32, py as u32);
            for ch in 0..3 {
                let (bg, fg) = (f32::from(pixel.0[ch]), f32::from(color.0[ch]));
                pixel.0[ch] = (bg + (fg - bg) * coverage.min(1.0)).round() as u8;
            }
        });
    }
}

/// A wrapped legend line with its measured size and the width it must fit in.
struct Line {
    text: String,
    active: bool,
    size: (u32, u32),
    allowed_width: u32,
}

/// The sizes `draw_grid_annotations` derives before drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Margins {
    pub pad_left: u32,
    pub pad_top: u32,
    pub font_size: u32,
    pub line_spacing: u32,
}

fn layout(texts: &[Vec<Annotation>], allowed: u32, size: u32) -> Vec<Vec<Line>> {
    texts
        .iter()
        .map(|lines| {
            lines
                .iter()
                .flat_map(|a| {
                    wrap(&a.text, size, allowed).into_iter().map(|t| Line {
                        size: text_size(&t, size),
                        text: t,
                        active: a.active,
                        allowed_width: allowed,
                    })
                })
                .collect()
        })
        .collect()
}

/// `draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin)`: column labels
/// above, row labels to the left (`width * 3 / 4` wide when there are any), and `margin`
/// pixels between cells. Returns the new image and the margins it used.
pub fn annotate(
    im: &RgbImage,
    width: u32,
    height: u32,
    hor: &[Vec<Annotation>],
    ver: &[Vec<Annotation>],
    margin: u32,
) -> (RgbImage, Margins) {
    let fontsize = font_size(width, height);
    let spacing = fontsize / 2;
    let has_ver = ver.iter().flatten().any(|a| !a.text.is_empty());
    let pad_left = if has_ver { width * 3 / 4 } else { 0 };
    let cols = (im.width() / width.max(1)) as usize;
    let rows = (im.height() / height.max(1)) as usize;
    let hor = layout(hor, width, fontsize);
    let ver = layout(ver, pad_left, fontsize);
    let height_of = |lines: &[Line]| -> i64 {
        lines
            .iter()
            .map(|l| i64::from(l.size.1 + spacing))
            .sum::<i64>()
            - i64::from(spacing)
    };
    let hor_heights: Vec<i64> = hor.iter().map(|l| height_of(l)).collect();
    // Upstream subtracts the spacing once per line here (not once per block as for columns).
    let ver_heights: Vec<i64> = ver
        .iter()
        .map(|l| {
            l.iter().map(|x| i64::from(x.size.1 + spacing)).sum::<i64>()
                - i64::from(spacing) * l.len() as i64
        })
        .collect();
    let pad_top = if hor_heights.iter().sum::<i64>() == 0 {
        0
    } else {
        (hor_heights.iter().copied().max().unwrap_or(0) + 2 * i64::from(spacing)).max(0) as u32
    };
    let gaps = |n: usize| margin * (n.max(1) as u32 - 1);
    let mut result = RgbImage::from_pixel(
        im.width() + pad_left + gaps(cols),
        im.height() + pad_top + gaps(rows),
        BACKGROUND,
    );
    for row in 0..rows as u32 {
        for col in 0..cols as u32 {
            let cell = imageops::crop_imm(im, width * col, height * row, width, height).to_image();
            let x = pad_left + (width + margin) * col;
            let y = pad_top + (height + margin) * row;
            imageops::replace(&mut result, &cell, i64::from(x), i64::from(y));
        }
    }
    for (col, lines) in hor.iter().enumerate().take(cols) {
        let x = pad_left as f32 + ((width + margin) * col as u32) as f32 + width as f32 / 2.0;
        let y = pad_top as f32 / 2.0 - hor_heights[col] as f32 / 2.0;
        draw_lines(&mut result, x, y, lines, fontsize, spacing);
    }
    for (row, lines) in ver.iter().enumerate().take(rows) {
        let x = pad_left as f32 / 2.0;
        let y = (pad_top + (height + margin) * row as u32) as f32 + height as f32 / 2.0
            - ver_heights[row] as f32 / 2.0;
        draw_lines(&mut result, x, y, lines, fontsize, spacing);
    }
    let margins = Margins {
        pad_left,
        pad_top,
        font_size: fontsize,
        line_spacing: spacing,
    };
    (result, margins)
}

fn draw_lines(img: &mut RgbImage, x: f32, mut y: f32, lines: &[Line], size: u32, spacing: u32) {
    for line in lines {
        // Shrink a line that still does not fit (one long word) until it does.
        let mut fontsize = size;
        while text_size(&line.text, fontsize).0 > line.allowed_width && fontsize > 0 {
            fontsize -= 1;
        }
        let color = if line.active { ACTIVE } else { INACTIVE };
        if fontsize > 0 {
            draw_text(
                img,
                &line.text,
                fontsize,
                x,
                y + line.size.1 as f32 / 2.0,
                color,
            );
        }
        if !line.active {
            let (w, h) = (line.size.0 as i64 / 2, line.size.1 as i64 / 2);
            let y_mid = y as i64 + h;
            for yy in y_mid - 2..y_mid + 2 {
                for xx in x as i64 - w..=x as i64 + w {
                    if xx >= 0
                        && yy >= 0
                        && xx < i64::from(img.width())
                        && yy < i64::from(img.height())
                    {
                        img.put_pixel(xx as u32, yy as u32, INACTIVE);
                    }
                }
            }
        }
        y += (line.size.1 + spacing) as f32;
    }
}

/// `draw_prompt_matrix`: the first half of the variable parts label the columns, the rest
/// the rows; a part not in a cell's combination is shown struck through.
pub fn prompt_matrix_texts(parts: &[String]) -> (Vec<Vec<Annotation>>, Vec<Vec<Annotation>>) {
    let prompts = &parts[1..];
    let boundary = prompts.len().div_ceil(2);
    let (horiz, vert) = prompts.split_at(boundary);
    let texts = |group: &[String]| -> Vec<Vec<Annotation>> {
        (0..1usize << group.len())
            .map(|pos| {
                group
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Annotation {
                        text: t.clone(),
                        active: pos & (1 << i) != 0,
                    })
                    .collect()
            })
            .collect()
    };
    (texts(horiz), texts(vert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_shape_follows_rows() {
        let imgs: Vec<RgbImage> = (0..5).map(|_| RgbImage::new(8, 6)).collect();
        let g = image_grid(&imgs, 2);
        assert_eq!(g.dimensions(), (24, 12));
        assert_eq!(auto_rows(4), 2);
        assert_eq!(auto_rows(3), 2);
        assert_eq!(auto_rows(1), 1);
    }

    #[test]
    fn long_labels_wrap_and_fit() {
        let lines = wrap("CFG Scale: 7.5 with a long tail of words", 20, 120);
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines
            .iter()
            .all(|l| text_length(l, 20.0) <= 120.0 || !l.contains(' ')));
    }

    #[test]
    fn annotation_margins_follow_a1111() {
        let im = RgbImage::from_pixel(3 * 64, 2 * 64, Rgb([10, 20, 30]));
        let hor: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|t| vec![Annotation::new(*t)])
            .collect();
        let ver: Vec<_> = ["x", "y"]
            .iter()
            .map(|t| vec![Annotation::new(*t)])
            .collect();
        let (out, m) = annotate(&im, 64, 64, &hor, &ver, 4);
        assert_eq!(m.font_size, 5);
        assert_eq!(m.pad_left, 48);
        let text_h = text_size("a", 5)
            .1
            .max(text_size("b", 5).1)
            .max(text_size("c", 5).1);
        assert_eq!(m.pad_top, text_h + 2 * m.line_spacing);
        assert_eq!(out.dimensions(), (48 + 192 + 8, m.pad_top + 128 + 4));
        // No labels at all: the grid is unchanged.
        let empty = vec![vec![Annotation::new("")]; 3];
        let none = vec![vec![Annotation::new("")]; 2];
        assert_eq!(
            annotate(&im, 64, 64, &empty, &none, 0).0.dimensions(),
            im.dimensions()
        );
    }

    #[test]
    fn prompt_matrix_labels_split_in_half() {
        let parts: Vec<String> = ["p", "smiling", "hat", "glasses"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (h, v) = prompt_matrix_texts(&parts);
        assert_eq!(h.len(), 4);
        assert_eq!(v.len(), 2);
        assert_eq!(
            h[1].iter().map(|a| a.active).collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(v[0][0].text, "glasses");
        assert!(!v[0][0].active);
    }
}
