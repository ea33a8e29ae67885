//! Geometric operations on one `(H, W, C)` `u8` image (row-major, channels last, the layout
//! of [`crate::data::ImageDataset::image`]): quarter turns, mirroring, rotation by any angle,
//! and crop + bilinear resize. Each returns a new image that can go through
//! [`crate::data::hwc_u8_to_tensor`] like any dataset image. Nothing here draws random
//! numbers: the augmentations ([`crate::augment`]) and the pretext tasks ([`crate::pretext`])
//! that build on these operations make the random choices.
//!
//! Functions panic if `img.len() != h*w*c` (a programming error, never user input).

/// Panics unless `img` holds an `h × w × c` image.
pub(crate) fn check(img: &[u8], h: usize, w: usize, c: usize) {
    assert_eq!(img.len(), h * w * c, "image is not {h}x{w}x{c}");
}

/// An `f32` pixel value rounded (half away from zero) and clamped to `u8`.
pub(crate) fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Rotates one `(H, W, C)` `u8` image by `k·90°` counter-clockwise (`k` taken mod 4).
///
/// The result is `(H, W, C)` for even `k` and `(W, H, C)` for odd `k` (identical shapes for
/// the square images this is meant for). For `k = 1`, `out[i][j] = img[j][W−1−i]`, so the
/// 2×2 pattern `[[1,2],[3,4]]` becomes `[[2,4],[1,3]]`. Panics if `img.len() != h*w*c`.
pub fn rotate90(img: &[u8], h: usize, w: usize, c: usize, k: u8) -> Vec<u8> {
    check(img, h, w, c);
    let k = k % 4;
    if k == 0 {
        return img.to_vec();
    }
    let mut out = vec![0u8; img.len()];
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    for i in 0..oh {
        for j in 0..ow {
            let (sy, sx) = match k {
                1 => (j, w - 1 - i),
                2 => (h - 1 - i, w - 1 - j),
                _ => (h - 1 - j, i),
            };
            let s = (sy * w + sx) * c;
            let d = (i * ow + j) * c;
            out[d..d + c].copy_from_slice(&img[s..s + c]);
        }
    }
    out
}

/// Mirrors one `(H, W, C)` image left–right. Panics if `img.len() != h*w*c`.
pub fn hflip(img: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
    check(img, h, w, c);
    let mut out = vec![0u8; img.len()];
    for y in 0..h {
        for x in 0..w {
            let s = (y * w + x) * c;
            let d = (y * w + (w - 1 - x)) * c;
            out[d..d + c].copy_from_slice(&img[s..s + c]);
        }
    }
    out
}

/// A crop box inside an image: rows `top..top+height`, columns `left..left+width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows (≥ 1).
    pub height: usize,
    /// Columns (≥ 1).
    pub width: usize,
}

/// Crops `b` out of the `(h, w, c)` image and resizes it bilinearly to `(oh, ow, c)`.
///
/// Sampling follows PyTorch's `interpolate(mode="bilinear", align_corners=False)` without
/// antialiasing: output pixel `y` reads source row `(y + 0.5)·b.height/oh − 0.5` (clamped
/// below at 0, neighbours clamped to the box), likewise for columns. A box the size of the
/// output is copied unchanged. Panics if the box does not lie inside the image.
pub fn crop_resize(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    b: CropBox,
    oh: usize,
    ow: usize,
) -> Vec<u8> {
    check(img, h, w, c);
    assert!(
        b.height >= 1 && b.width >= 1 && b.top + b.height <= h && b.left + b.width <= w,
        "crop box {b:?} outside a {h}x{w} image"
    );
    let taps = |n_out: usize, n_in: usize| -> Vec<(usize, usize, f32)> {
        let s = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * s - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = taps(oh, b.height);
    let xs = taps(ow, b.width);
    let mut out = vec![0u8; oh * ow * c];
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            let at =
                |y: usize, x: usize, ch: usize| img[((b.top + y) * w + b.left + x) * c + ch] as f32;
            for ch in 0..c {
                let top = at(y0, x0, ch) * (1.0 - fx) + at(y0, x1, ch) * fx;
                let bot = at(y1, x0, ch) * (1.0 - fx) + at(y1, x1, ch) * fx;
                out[(oy * ow + ox) * c + ch] = to_u8(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}

/// Rotates by `degrees` counter-clockwise about the image centre, same size, bilinear
/// sampling; pixels whose source lies outside the image are 0 (torchvision's default fill).
/// Output pixel centre `(y, x)` reads the source at the inverse rotation of its offset from
/// the centre `((h−1)/2, (w−1)/2)`. 0° is the identity.
pub fn rotate(img: &[u8], h: usize, w: usize, c: usize, degrees: f64) -> Vec<u8> {
    check(img, h, w, c);
    if degrees == 0.0 {
        return img.to_vec();
    }
    let (s, co) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut out = vec![0u8; img.len()];
    let get = |y: i64, x: i64, ch: usize| -> f64 {
        if y < 0 || x < 0 || y >= h as i64 || x >= w as i64 {
            0.0
        } else {
            img[(y as usize * w + x as usize) * c + ch] as f64
        }
    };
    for y in 0..h {
        for x in 0..w {
            // image rows grow downwards: a CCW turn on screen maps (dx, −dy) by the rotation
            let (dy, dx) = (y as f64 - cy, x as f64 - cx);
            let sx = co * dx - s * dy + cx;
            let sy = s * dx + co * dy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for ch in 0..c {
                let v = (get(y0, x0, ch) * (1.0 - fx) + get(y0, x0 + 1, ch) * fx) * (1.0 - fy)
                    + (get(y0 + 1, x0, ch) * (1.0 - fx) + get(y0 + 1, x0 + 1, ch) * fx) * fy;
                out[(y * w + x) * c + ch] = to_u8(v as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(seed: u64) -> Vec<u8> {
        crate::data::synthetic::generate(1, seed).image(0).to_vec()
    }

    #[test]
    fn known_2x2_rotations() {
        let img = [1u8, 2, 3, 4];
        assert_eq!(rotate90(&img, 2, 2, 1, 1), vec![2, 4, 1, 3]);
        assert_eq!(rotate90(&img, 2, 2, 1, 2), vec![4, 3, 2, 1]);
        assert_eq!(rotate90(&img, 2, 2, 1, 3), vec![3, 1, 4, 2]);
        assert_eq!(rotate90(&img, 2, 2, 1, 4), img.to_vec());
        assert_eq!(hflip(&img, 2, 2, 1), vec![2, 1, 4, 3]);
    }

    #[test]
    fn non_square_and_multichannel() {
        // 2x3 RGB-ish with channel pairs (v, v+100): [[1,2,3],[4,5,6]] CCW -> [[3,6],[2,5],[1,4]]
        let img: Vec<u8> = (1..=6u8).flat_map(|v| [v, v + 100]).collect();
        let r = rotate90(&img, 2, 3, 2, 1);
        let want: Vec<u8> = [3u8, 6, 2, 5, 1, 4]
            .iter()
            .flat_map(|&v| [v, v + 100])
            .collect();
        assert_eq!(r, want);
    }

    #[test]
    fn four_quarter_turns_are_identity() {
        let ds = crate::data::synthetic::generate(3, 0);
        let img = ds.image(1);
        let mut r = img.to_vec();
        for _ in 0..4 {
            r = rotate90(&r, 32, 32, 3, 1);
        }
        assert_eq!(r, img);
        assert_ne!(rotate90(img, 32, 32, 3, 1), img);
        // two single turns equal one half turn
        let twice = rotate90(&rotate90(img, 32, 32, 3, 1), 32, 32, 3, 1);
        assert_eq!(twice, rotate90(img, 32, 32, 3, 2));
    }

    #[test]
    fn flip_twice_is_identity() {
        let x = img(2);
        let f = hflip(&x, 32, 32, 3);
        assert_ne!(f, x);
        assert_eq!(hflip(&f, 32, 32, 3), x);
        assert_eq!(hflip(&[1, 2, 3, 4, 5, 6], 2, 3, 1), vec![3, 2, 1, 6, 5, 4]);
    }

    #[test]
    fn crop_resize_known_values() {
        // 2x2 one-channel [[0, 100], [200, 40]] upsampled to 4x4: row 0 reads source row
        // max(0, 0.5·0.5 − 0.5) = 0, row 1 reads 0.25; column 1 reads 0.25 → row 0 is
        // [0, 25, 75, 100]; pixel (1, 1) = 0.75·(0.75·0 + 0.25·100) + 0.25·(0.75·200 + 0.25·40)
        // = 18.75 + 40 = 58.75 → 59.
        let x = [0u8, 100, 200, 40];
        let b = CropBox {
            top: 0,
            left: 0,
            height: 2,
            width: 2,
        };
        let y = crop_resize(&x, 2, 2, 1, b, 4, 4);
        assert_eq!(&y[0..4], &[0, 25, 75, 100]);
        assert_eq!(y[5], 59);
        // a 1x1 box of a 3x3 image resized to 2x2 repeats that pixel
        let z: Vec<u8> = (0..9).collect();
        let b = CropBox {
            top: 1,
            left: 2,
            height: 1,
            width: 1,
        };
        assert_eq!(crop_resize(&z, 3, 3, 1, b, 2, 2), vec![5, 5, 5, 5]);
    }

    #[test]
    fn rotations() {
        let x = img(4);
        // four quarter turns, and a 90° angle equals one quarter turn on a square image
        let q = rotate90(&x, 32, 32, 3, 1);
        assert_eq!(rotate(&x, 32, 32, 3, 90.0), q);
        assert_eq!(rotate90(&rotate90(&q, 32, 32, 3, 2), 32, 32, 3, 1), x);
        // a small angle keeps the centre pixel of an odd-sized image and blackens a corner
        let z: Vec<u8> = (0..25).map(|v| 10 + v as u8).collect();
        let r = rotate(&z, 5, 5, 1, 30.0);
        assert_eq!(r[12], z[12]);
        assert_ne!(r, z);
        assert!(r[0] < z[0], "{r:?}");
    }
}
