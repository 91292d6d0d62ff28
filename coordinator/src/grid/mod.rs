//! Grid images composed when a sweep's last image completes, as A1111's X/Y/Z plot and
//! Prompt matrix scripts draw them, stored beside the images as `grid-….png` with the grid
//! infotext fields A1111 writes (Script, X Type, X Values, …).
//!
//! [`GridPlan`] is everything the composer needs that is not in the images themselves
//! (labels with seeds already drawn, shape, processing order); it is written to the object
//! store as `grid-plan.json` at submit, so any coordinator replica, or one restarted after
//! the job finished, can compose the grids later.

pub mod draw;
mod job;

pub use job::{GridError, GridQueue};
#[path = "../../../worker/src/storage.rs"]
pub mod storage;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::expand::Cells;
use crate::spec::axes::Field;
use crate::spec::PromptMatrixSpec;

use draw::{annotate, auto_rows, image_grid, prompt_matrix_texts, Annotation};

/// A1111's default `img_max_size_mp`: it refuses a plot whose grid would be larger. A farm
/// renders such a sweep anyway and skips only the grid.
pub const MAX_GRID_MEGAPIXELS: u64 = 200;

/// The object holding a job's [`GridPlan`], under the job's output prefix.
pub const PLAN_OBJECT: &str = "grid-plan.json";
/// Written after the last grid: its presence means the job's grids are complete.
pub const DONE_OBJECT: &str = "grid-done.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridPlan {
    pub images_per_cell: u32,
    pub layout: Layout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Layout {
    Xyz {
        /// Values per axis, X, Y, Z.
        sizes: [u64; 3],
        /// Axis numbers from the outermost processing loop to the innermost.
        order: [usize; 3],
        /// Legend texts per axis.
        labels: [Vec<String>; 3],
        draw_legend: bool,
        margin: u32,
        include_sub_grids: bool,
        /// Infotext fields per axis (`X Type`, `X Values`, `Fixed X Values`), empty for
        /// "Nothing".
        fields: [Vec<(String, String)>; 3],
    },
    PromptMatrix {
        /// `prompt.split("|")`.
        parts: Vec<String>,
        margin: u32,
    },
}

impl GridPlan {
    /// The grids a sweep will get, or `None` for a plain sweep or one whose grid would be
    /// larger than [`MAX_GRID_MEGAPIXELS`].
    pub fn for_sweep(cells: &Cells<'_>) -> Option<GridPlan> {
        let spec = cells.spec();
        // A wildcard sweep is a data set: its cells are prompts, not positions on a grid.
        if spec.wildcards.is_some() {
            return None;
        }
        let pixels = u64::from(spec.base.width) * u64::from(spec.base.height);
        if cells.len().saturating_mul(pixels) / 1_000_000 >= MAX_GRID_MEGAPIXELS {
            return None;
        }
        let layout = if let Some((xyz, order)) = cells.xyz() {
            let names = ["X", "Y", "Z"];
            let fields = [0, 1, 2].map(|i| {
                let axis = &xyz.axes[i];
                if axis.is_nothing() {
                    return Vec::new();
                }
                let mut f = vec![
                    (format!("{} Type", names[i]), axis.def.label.to_string()),
                    (format!("{} Values", names[i]), axis.text.clone()),
                ];
                let seeds = matches!(axis.def.field, Field::Seed | Field::Subseed);
                if seeds && !xyz.keep_random_seeds {
                    let fixed: Vec<String> = axis.values.iter().map(|v| v.py_str()).collect();
                    f.push((format!("Fixed {} Values", names[i]), fixed.join(", ")));
                }
                f
            });
            Layout::Xyz {
                sizes: [0, 1, 2].map(|i| xyz.axes[i].len() as u64),
                order,
                labels: [0, 1, 2].map(|i| {
                    let a = &xyz.axes[i];
                    a.values.iter().map(|v| a.def.label_of(v)).collect()
                }),
                draw_legend: xyz.draw_legend,
                margin: xyz.margin_size,
                include_sub_grids: xyz.include_sub_grids,
                fields,
            }
        } else if let Some(parts) = cells.matrix_parts() {
            let m: &PromptMatrixSpec = spec.prompt_matrix.as_ref()?;
            Layout::PromptMatrix {
                parts: parts.to_vec(),
                margin: m.margin_size,
            }
        } else {
            return None;
        };
        Some(GridPlan {
            images_per_cell: cells.images_per_cell(),
            layout,
        })
    }

    /// Image indices of the cell at processing position `pos`.
    pub fn images_of(&self, pos: u64) -> std::ops::Range<u64> {
        let n = u64::from(self.images_per_cell);
        pos * n..(pos + 1) * n
    }

    pub fn cell_count(&self) -> u64 {
        match &self.layout {
            Layout::Xyz { sizes, .. } => sizes.iter().product(),
            Layout::PromptMatrix { parts, .. } => 1 << (parts.len() - 1),
        }
    }
}

/// One composed grid, ready to store.
#[derive(Debug, Clone)]
pub struct Grid {
    /// File name under the job's prefix.
    pub name: String,
    pub image: RgbImage,
    pub infotext: String,
}

/// Processing position of grid cell `[ix, iy, iz]`.
fn pos_of(order: [usize; 3], sizes: [u64; 3], c: [usize; 3]) -> u64 {
    let (o0, o1, o2) = (order[0], order[1], order[2]);
    c[o0] as u64 * sizes[o1] * sizes[o2] + c[o1] as u64 * sizes[o2] + c[o2] as u64
}

/// A1111's `quote` for infotext values.
fn quote(v: &str) -> String {
    if v.contains([',', '\n', ':']) {
        serde_json::to_string(v).expect("strings serialise")
    } else {
        v.to_string()
    }
}

/// `extra_generation_params` land just before `Version` (or at the end without one).
pub fn add_infotext_fields(infotext: &str, fields: &[(String, String)]) -> String {
    if fields.is_empty() {
        return infotext.to_string();
    }
    let extra: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}: {}", quote(v)))
        .collect();
    let extra = extra.join(", ");
    let (head, last) = infotext.rsplit_once('\n').unwrap_or(("", infotext));
    let last = match last.find(", Version: ") {
        Some(i) => format!("{}, {extra}{}", &last[..i], &last[i..]),
        None if last.is_empty() => extra,
        None => format!("{last}, {extra}"),
    };
    if head.is_empty() && !infotext.contains('\n') {
        last
    } else {
        format!("{head}\n{last}")
    }
}

/// Composes the grids of a finished job. `tile(pos)` is the cell's image (a grid of its
/// images when it has several, black when none rendered) and `infotext(pos)` the infotext
/// of its first image.
pub fn compose(
    plan: &GridPlan,
    tile: impl Fn(u64) -> RgbImage,
    infotext: impl Fn(u64) -> String,
) -> Vec<Grid> {
    match &plan.layout {
        Layout::Xyz {
            sizes,
            order,
            labels,
            draw_legend,
            margin,
            include_sub_grids,
            fields,
        } => {
            let [nx, ny, nz] = sizes.map(|n| n as usize);
            let texts = |i: usize| -> Vec<Vec<Annotation>> {
                labels[i]
                    .iter()
                    .map(|l| vec![Annotation::new(l.clone())])
                    .collect()
            };
            let mut subgrids = Vec::with_capacity(nz);
            let mut grids = Vec::new();
            let sub_fields: Vec<(String, String)> =
                std::iter::once(("Script".to_string(), "X/Y/Z plot".to_string()))
                    .chain(fields[0].iter().cloned())
                    .chain(fields[1].iter().cloned())
                    .collect();
            for iz in 0..nz {
                let tiles: Vec<RgbImage> = (0..ny)
                    .flat_map(|iy| (0..nx).map(move |ix| [ix, iy, iz]))
                    .map(|c| tile(pos_of(*order, *sizes, c)))
                    .collect();
                let (w, h) = max_size(&tiles);
                let mut grid = image_grid(&tiles, ny);
                if *draw_legend {
                    grid = annotate(&grid, w, h, &texts(0), &texts(1), *margin).0;
                }
                if *include_sub_grids && nz > 1 {
                    grids.push(Grid {
                        name: format!("grid-xyz-z{iz:03}.png"),
                        image: grid.clone(),
                        infotext: add_infotext_fields(
                            &infotext(pos_of(*order, *sizes, [0, 0, iz])),
                            &sub_fields,
                        ),
                    });
                }
                subgrids.push(grid);
            }
            let (w, h) = max_size(&subgrids);
            let mut main = image_grid(&subgrids, 1);
            if *draw_legend {
                main = annotate(&main, w, h, &texts(2), &[vec![Annotation::new("")]], 0).0;
            }
            let main_fields: Vec<(String, String)> = sub_fields
                .iter()
                .cloned()
                .chain(fields[2].iter().cloned())
                .collect();
            grids.insert(
                0,
                Grid {
                    name: "grid-xyz.png".into(),
                    image: main,
                    infotext: add_infotext_fields(
                        &infotext(pos_of(*order, *sizes, [0, 0, 0])),
                        &main_fields,
                    ),
                },
            );
            grids
        }
        Layout::PromptMatrix { parts, margin } => {
            let n = plan.cell_count();
            let tiles: Vec<RgbImage> = (0..n).map(&tile).collect();
            let rows = 1usize << ((parts.len() - 1) / 2);
            let (w, h) = max_size(&tiles);
            let grid = image_grid(&tiles, rows);
            let (hor, ver) = prompt_matrix_texts(parts);
            let (image, _) = annotate(&grid, w, h, &hor, &ver, *margin);
            vec![Grid {
                name: "grid-prompt-matrix.png".into(),
                image,
                infotext: infotext(0),
            }]
        }
    }
}

fn max_size(images: &[RgbImage]) -> (u32, u32) {
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    (w, h)
}

/// A cell's tile from its images: one image as is, several as A1111's per-run grid
/// (`round(sqrt(n))` rows).
pub fn cell_tile(images: Vec<RgbImage>) -> RgbImage {
    match images.len() {
        1 => images.into_iter().next().expect("one image"),
        n => image_grid(&images, auto_rows(n)),
    }
}

/// Encodes a grid as PNG with its infotext in the `parameters` text chunk, where A1111 and
/// its "PNG Info" tab look.
pub fn encode_png(image: &RgbImage, parameters: &str) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if parameters
            .chars()
            .all(|c| c != '\0' && u32::from(c) <= 0xFF)
        {
            encoder.add_text_chunk("parameters".into(), parameters.into())?;
        } else {
            encoder.add_itxt_chunk("parameters".into(), parameters.into())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(image.as_raw())?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_fields_go_before_version() {
        let info = "a cat\nNegative prompt: dog\nSteps: 3, Seed: 1, Version: sdfarm 0.1.0";
        let fields = vec![
            ("Script".to_string(), "X/Y/Z plot".to_string()),
            ("X Values".to_string(), "1, 2".to_string()),
        ];
        assert_eq!(
            add_infotext_fields(info, &fields),
            "a cat\nNegative prompt: dog\nSteps: 3, Seed: 1, Script: X/Y/Z plot, X Values: \"1, 2\", Version: sdfarm 0.1.0"
        );
    }

    #[test]
    fn positions_invert_processing_order() {
        let order = [2, 0, 1];
        let sizes = [3, 2, 4];
        for pos in 0..24 {
            let c = crate::expand::coords(order, sizes, pos);
            assert_eq!(pos_of(order, sizes, c), pos);
        }
    }
}
