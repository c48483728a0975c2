//! Reference implementations of the single ops on the CPU, for float32 and
//! float64. They are plain loops: the point is a correct baseline that other
//! devices are checked against, not peak speed.

use crate::{Ops, Tensor, TensorData, TensorError};

/// The CPU's ops.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuOps;

trait Float:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Div<Output = Self>
{
    const ZERO: Self;
    fn from_f32(v: f32) -> Self;
    fn exp(self) -> Self;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// Borrowed float data of either width, so each op is written once.
enum Floats<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

fn floats<'a>(t: &'a Tensor, op: &str) -> Result<Floats<'a>, TensorError> {
    match t.data() {
        TensorData::Float32(v) => Ok(Floats::F32(v)),
        TensorData::Float64(v) => Ok(Floats::F64(v)),
        other => Err(TensorError::bad(format!(
            "{op} on the cpu device takes float32 or float64, got {}",
            other.dtype().name()
        ))),
    }
}

fn dims2(t: &Tensor, what: &str) -> Result<(usize, usize), TensorError> {
    match t.shape() {
        [r, c] => Ok((*r as usize, *c as usize)),
        s => Err(TensorError::bad(format!("{what} must be 2-D, got shape {s:?}"))),
    }
}

fn same_dtype(a: &Tensor, b: &Tensor, op: &str) -> Result<(), TensorError> {
    if a.dtype() != b.dtype() {
        return Err(TensorError::bad(format!(
            "{op}: dtypes differ ({} vs {})",
            a.dtype().name(),
            b.dtype().name()
        )));
    }
    Ok(())
}

/// out[m,n] = alpha * sum_k A[i,k] B[k,j] + beta * C (broadcast), with optional transposes.
#[allow(clippy::too_many_arguments)]
fn gemm_impl<T: Float>(
    a: &[T],
    b: &[T],
    c: Option<(&[T], &[u64])>,
    (m, k, n): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    alpha: T,
    beta: T,
) -> Result<Vec<T>, TensorError> {
    let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
    let bt = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
    let mut out = vec![T::ZERO; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = at(i, p);
            for j in 0..n {
                out[i * n + j] = out[i * n + j] + av * bt(p, j);
            }
        }
    }
    for v in out.iter_mut() {
        *v = alpha * *v;
    }
    if let Some((c, cshape)) = c {
        let (cr, cc) = bias_dims(cshape, m, n)?;
        for i in 0..m {
            for j in 0..n {
                let cv = c[(if cr == 1 { 0 } else { i }) * cc + if cc == 1 { 0 } else { j }];
                out[i * n + j] = out[i * n + j] + beta * cv;
            }
        }
    }
    Ok(out)
}

/// Rows and columns of gemm's `c` as it broadcasts (unidirectionally, as
/// ONNX Gemm allows) to [m, n].
pub fn bias_dims(cshape: &[u64], m: usize, n: usize) -> Result<(usize, usize), TensorError> {
    let (cr, cc) = match cshape {
        [] => (1, 1),
        [x] => (1, *x as usize),
        [r, cl] => (*r as usize, *cl as usize),
        s => return Err(TensorError::bad(format!("gemm: c must be at most 2-D, got {s:?}"))),
    };
    if !(cr == 1 || cr == m) || !(cc == 1 || cc == n) {
        return Err(TensorError::bad(format!(
            "gemm: c of shape {cshape:?} does not broadcast to [{m}, {n}]"
        )));
    }
    Ok((cr, cc))
}

/// Largest output one op call may make (elements), and most multiply-adds
/// one gemm may do: a guest's tensors are bounded by its memory limit, but
/// an output is not (zero-sized inputs can declare any dims), and host code
/// is not interrupted by the scoring deadline. Found by fuzzing.
pub const MAX_OUTPUT_ELEMENTS: u64 = 1 << 26;
pub const MAX_GEMM_WORK: u64 = 1 << 33;

/// [m, k] and [k, n] of `op(a) x op(b)`, within the output and work
/// limits; every device checks a product's shapes with this.
pub fn gemm_dims(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, op: &str) -> Result<(usize, usize, usize), TensorError> {
    let (ar, ac) = dims2(a, &format!("{op}: a"))?;
    let (br, bc) = dims2(b, &format!("{op}: b"))?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(TensorError::bad(format!(
            "{op}: inner dimensions differ: a {:?} and b {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let out = (m as u64).checked_mul(n as u64).filter(|e| *e <= MAX_OUTPUT_ELEMENTS);
    let Some(out) = out else {
        return Err(TensorError::bad(format!(
            "{op}: an output of [{m}, {n}] is more than {MAX_OUTPUT_ELEMENTS} elements"
        )));
    };
    if out.checked_mul(k as u64).is_none_or(|w| w > MAX_GEMM_WORK) {
        return Err(TensorError::bad(format!(
            "{op}: [{m}, {k}] x [{k}, {n}] is more than {MAX_GEMM_WORK} multiply-adds for one call"
        )));
    }
    Ok((m, k, n))
}

impl Ops for CpuOps {
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
        self.gemm(a, b, None, 1.0, 0.0, false, false).map_err(|e| match e {
            TensorError::BadInput(m) => TensorError::BadInput(m.replacen("gemm", "matmul", 1)),
            other => other,
        })
    }

    fn gemm(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: Option<&Tensor>,
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Tensor, TensorError> {
        same_dtype(a, b, "gemm")?;
        if let Some(c) = c {
            same_dtype(a, c, "gemm")?;
        }
        let (m, k, n) = gemm_dims(a, b, trans_a, trans_b, "gemm")?;
        let shape = vec![m as u64, n as u64];
        let data = match (floats(a, "gemm")?, floats(b, "gemm")?) {
            (Floats::F32(x), Floats::F32(y)) => {
                let c = match c.map(|c| floats(c, "gemm")).transpose()? {
                    Some(Floats::F32(cv)) => Some((cv, c.map(Tensor::shape).unwrap_or(&[]))),
                    _ => None,
                };
                TensorData::Float32(gemm_impl(x, y, c, (m, k, n), trans_a, trans_b, alpha, beta)?)
            }
            (Floats::F64(x), Floats::F64(y)) => {
                let c = match c.map(|c| floats(c, "gemm")).transpose()? {
                    Some(Floats::F64(cv)) => Some((cv, c.map(Tensor::shape).unwrap_or(&[]))),
                    _ => None,
                };
                TensorData::Float64(gemm_impl(
                    x,
                    y,
                    c,
                    (m, k, n),
                    trans_a,
                    trans_b,
                    f64::from_f32(alpha),
                    f64::from_f32(beta),
                )?)
            }
            _ => unreachable!("dtypes checked equal above"),
        };
        Tensor::new(shape, data)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
        same_dtype(a, b, "add")?;
        let (sa, sb) = (a.shape(), b.shape());
        if sb.len() > sa.len() || sa[sa.len() - sb.len()..] != *sb {
            return Err(TensorError::bad(format!(
                "add: b's shape {sb:?} must equal a's shape {sa:?} or a suffix of it"
            )));
        }
        fn go<T: Float>(x: &[T], y: &[T]) -> Vec<T> {
            if y.is_empty() {
                return x.to_vec();
            }
            x.iter().enumerate().map(|(i, &v)| v + y[i % y.len()]).collect()
        }
        let data = match (floats(a, "add")?, floats(b, "add")?) {
            (Floats::F32(x), Floats::F32(y)) => TensorData::Float32(go(x, y)),
            (Floats::F64(x), Floats::F64(y)) => TensorData::Float64(go(x, y)),
            _ => unreachable!("dtypes checked equal above"),
        };
        Tensor::new(sa.to_vec(), data)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor, TensorError> {
        fn go<T: Float>(x: &[T]) -> Vec<T> {
            x.iter().map(|&v| if v > T::ZERO { v } else { T::ZERO }).collect()
        }
        let data = match floats(x, "relu")? {
            Floats::F32(v) => TensorData::Float32(go(v)),
            Floats::F64(v) => TensorData::Float64(go(v)),
        };
        Tensor::new(x.shape().to_vec(), data)
    }

    fn softmax(&self, x: &Tensor, axis: i32) -> Result<Tensor, TensorError> {
        let shape = x.shape();
        let rank = shape.len() as i32;
        let ax = if axis < 0 { axis + rank } else { axis };
        if ax < 0 || ax >= rank {
            return Err(TensorError::bad(format!(
                "softmax: axis {axis} is out of range for shape {shape:?}"
            )));
        }
        let ax = ax as usize;
        let dim = shape[ax] as usize;
        // Checked: an empty tensor's other dims may multiply past u64 (it
        // returns below with no element visited).
        let product = |dims: &[u64]| dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).unwrap_or(0) as usize;
        let (inner, outer) = (product(&shape[ax + 1..]), product(&shape[..ax]));
        fn go<T: Float>(v: &[T], outer: usize, dim: usize, inner: usize) -> Vec<T> {
            let mut out = v.to_vec();
            for o in 0..outer {
                for i in 0..inner {
                    let at = |d: usize| o * dim * inner + d * inner + i;
                    let mut max = v[at(0)];
                    for d in 1..dim {
                        if v[at(d)] > max {
                            max = v[at(d)];
                        }
                    }
                    let mut sum = T::ZERO;
                    for d in 0..dim {
                        let e = (v[at(d)] - max).exp();
                        out[at(d)] = e;
                        sum = sum + e;
                    }
                    for d in 0..dim {
                        out[at(d)] = out[at(d)] / sum;
                    }
                }
            }
            out
        }
        if dim == 0 || x.is_empty() {
            return Ok(x.clone());
        }
        let data = match floats(x, "softmax")? {
            Floats::F32(v) => TensorData::Float32(go(v, outer, dim, inner)),
            Floats::F64(v) => TensorData::Float64(go(v, outer, dim, inner)),
        };
        Tensor::new(shape.to_vec(), data)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, strides: [u32; 2], pads: [u32; 2]) -> Result<Tensor, TensorError> {
        same_dtype(x, w, "conv2d")?;
        let d = conv2d_dims(x, w, bias, strides, pads)?;
        fn go<T: Float>(x: &[T], w: &[T], bias: Option<&[T]>, d: &Conv2dDims) -> Vec<T> {
            let Conv2dDims {
                n,
                c,
                h,
                w: wi,
                o,
                kh,
                kw,
                ho,
                wo,
                stride,
                pad,
            } = *d;
            let mut out = vec![T::ZERO; n * o * ho * wo];
            for b in 0..n {
                for oc in 0..o {
                    let start = bias.map_or(T::ZERO, |v| v[oc]);
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut acc = start;
                            for ch in 0..c {
                                for ky in 0..kh {
                                    let Some(iy) = (oy * stride[0] + ky).checked_sub(pad[0]).filter(|iy| *iy < h) else {
                                        continue;
                                    };
                                    for kx in 0..kw {
                                        let Some(ix) = (ox * stride[1] + kx).checked_sub(pad[1]).filter(|ix| *ix < wi) else {
                                            continue;
                                        };
                                        acc = acc + x[((b * c + ch) * h + iy) * wi + ix] * w[((oc * c + ch) * kh + ky) * kw + kx];
                                    }
                                }
                            }
                            out[((b * o + oc) * ho + oy) * wo + ox] = acc;
                        }
                    }
                }
            }
            out
        }
        let data = match (
            floats(x, "conv2d")?,
            floats(w, "conv2d")?,
            bias.map(|b| floats(b, "conv2d")).transpose()?,
        ) {
            (Floats::F32(x), Floats::F32(w), None) => TensorData::Float32(go(x, w, None, &d)),
            (Floats::F32(x), Floats::F32(w), Some(Floats::F32(b))) => TensorData::Float32(go(x, w, Some(b), &d)),
            (Floats::F64(x), Floats::F64(w), None) => TensorData::Float64(go(x, w, None, &d)),
            (Floats::F64(x), Floats::F64(w), Some(Floats::F64(b))) => TensorData::Float64(go(x, w, Some(b), &d)),
            _ => return Err(TensorError::bad("conv2d: the bias must have x's dtype")),
        };
        Tensor::new(vec![d.n as u64, d.o as u64, d.ho as u64, d.wo as u64], data)
    }
}

/// The sizes of one conv2d (NCHW input, OIHW weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 2],
}

/// Checks a conv2d's shapes (x [N, C, H, W], w [O, C, KH, KW], bias [O])
/// against each other and the output and work limits; every device uses it.
pub fn conv2d_dims(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, strides: [u32; 2], pads: [u32; 2]) -> Result<Conv2dDims, TensorError> {
    let bad = |m: String| Err(TensorError::bad(format!("conv2d: {m}")));
    let ([n, c, h, wi], [o, ci, kh, kw]) = (x.shape(), w.shape()) else {
        return bad(format!(
            "x [N, C, H, W] and w [O, C, KH, KW] must be 4-D, got {:?} and {:?}",
            x.shape(),
            w.shape()
        ));
    };
    if c != ci {
        return bad(format!("x has {c} channels, w expects {ci}"));
    }
    if let Some(b) = bias {
        if b.shape() != [*o] {
            return bad(format!("bias must be [{o}], got {:?}", b.shape()));
        }
    }
    if strides.contains(&0) {
        return bad("strides must be at least 1".into());
    }
    // The sizes of tensors that exist (their data is in memory) fit usize;
    // only the derived output could be out of bounds.
    let (h, wi, kh, kw) = (*h as usize, *wi as usize, *kh as usize, *kw as usize);
    // A pad as wide as the kernel only adds outputs that see nothing but
    // padding, and lets a tiny call ask for a huge output (found by fuzzing).
    if pads[0] as usize >= kh.max(1) || pads[1] as usize >= kw.max(1) {
        return bad(format!("pads {pads:?} must each be smaller than the kernel ({kh}x{kw})"));
    }
    // (A dim of an empty tensor may be near usize::MAX: checked.)
    let out = |len: usize, k: usize, s: u32, p: u32| (len.checked_add(2 * p as usize)?.checked_sub(k)? / s as usize).checked_add(1);
    let (Some(ho), Some(wo)) = (out(h, kh, strides[0], pads[0]), out(wi, kw, strides[1], pads[1])) else {
        return bad(format!("a {kh}x{kw} kernel does not fit the padded {h}x{wi} input"));
    };
    let (n, c, o) = (*n as usize, *c as usize, *o as usize);
    let elements = [n, o, ho, wo].iter().try_fold(1u64, |acc, d| acc.checked_mul(*d as u64));
    if elements.is_none_or(|e| e > MAX_OUTPUT_ELEMENTS) {
        return bad(format!(
            "an output of [{n}, {o}, {ho}, {wo}] is more than {MAX_OUTPUT_ELEMENTS} elements"
        ));
    }
    // The loops run over every channel and kernel row even when another
    // factor is 0: count each as at least 1 (found by fuzzing: 2^40 empty
    // channels made an endless call out of a zero-work one).
    let per_output = [c, kh, kw].iter().try_fold(1u64, |acc, d| acc.checked_mul((*d).max(1) as u64));
    let work = elements.zip(per_output).and_then(|(e, p)| e.checked_mul(p));
    if work.is_none_or(|w| w > MAX_GEMM_WORK) {
        return bad(format!("more than {MAX_GEMM_WORK} multiply-adds for one call"));
    }
    Ok(Conv2dDims {
        n,
        c,
        h,
        w: wi,
        o,
        kh,
        kw,
        ho,
        wo,
        stride: [strides[0] as usize, strides[1] as usize],
        pad: [pads[0] as usize, pads[1] as usize],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_cannot_ask_for_a_huge_output() {
        // [2, 0] x [0, 2^40]: no data in, 2^41 elements out.
        let a = Tensor::new(vec![2, 0], TensorData::Float32(vec![])).unwrap();
        let b = Tensor::new(vec![0, 1 << 40], TensorData::Float32(vec![])).unwrap();
        let e = CpuOps.matmul(&a, &b).unwrap_err();
        assert!(matches!(&e, TensorError::BadInput(m) if m.contains("more than")), "{e:?}");
        // Modest inputs, an output of 2.5e9 elements.
        let col = Tensor::new(vec![50_000, 1], TensorData::Float32(vec![1.0; 50_000])).unwrap();
        let row = Tensor::new(vec![1, 50_000], TensorData::Float32(vec![1.0; 50_000])).unwrap();
        assert!(CpuOps.matmul(&col, &row).is_err());
        assert!(CpuOps.matmul(&row, &col).is_ok(), "a [1, 1] result is fine");
    }

    fn f32s(shape: &[u64], v: &[f32]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::Float32(v.to_vec())).unwrap()
    }

    #[test]
    fn conv2d_with_stride_pad_and_bias() {
        // One 3x3 input, one channel; a 2x2 kernel of ones; pad 1, stride 2.
        let x = f32s(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let w = f32s(&[1, 1, 2, 2], &[1., 1., 1., 1.]);
        let b = f32s(&[1], &[0.5]);
        let y = CpuOps.conv2d(&x, &w, Some(&b), [2, 2], [1, 1]).unwrap();
        assert_eq!(y.shape(), &[1, 1, 2, 2]);
        // Windows: {1}, {2,3}, {4,7}, {5,6,8,9}.
        assert_eq!(y.data(), &TensorData::Float32(vec![1.5, 5.5, 11.5, 28.5]));
        let e = CpuOps
            .conv2d(&x, &f32s(&[1, 2, 1, 1], &[1., 1.]), None, [1, 1], [0, 0])
            .unwrap_err();
        assert!(e.to_string().contains("channels"), "{e}");
        let big = f32s(&[1, 1, 1, 1], &[1.]);
        assert!(
            CpuOps.conv2d(&big, &big, None, [1, 1], [1 << 30, 1 << 30]).is_err(),
            "a huge padded output is refused"
        );
        assert!(CpuOps.conv2d(&big, &big, None, [0, 1], [0, 0]).is_err());
    }

    #[test]
    fn matmul_2x3_by_3x2() {
        let a = f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f32s(&[3, 2], &[7., 8., 9., 10., 11., 12.]);
        let c = CpuOps.matmul(&a, &b).unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        assert_eq!(c.data(), &TensorData::Float32(vec![58., 64., 139., 154.]));
    }

    #[test]
    fn matmul_inner_mismatch_is_bad_input() {
        let a = f32s(&[2, 3], &[0.; 6]);
        let err = CpuOps.matmul(&a, &a).unwrap_err();
        assert!(
            matches!(err, TensorError::BadInput(ref m) if m.starts_with("matmul: inner")),
            "{err:?}"
        );
    }

    #[test]
    fn gemm_transposes_and_bias() {
        // a^T (2x2) * b^T (2x1) * 2 + 1*[10]
        let a = f32s(&[2, 2], &[1., 3., 2., 4.]); // a^T = [[1,2],[3,4]]
        let b = f32s(&[1, 2], &[5., 6.]); // b^T = [[5],[6]]
        let c = f32s(&[1], &[10.]);
        let out = CpuOps.gemm(&a, &b, Some(&c), 2.0, 1.0, true, true).unwrap();
        assert_eq!(out.shape(), &[2, 1]);
        assert_eq!(out.data(), &TensorData::Float32(vec![2. * 17. + 10., 2. * 39. + 10.]));
    }

    #[test]
    fn add_broadcasts_a_bias_row() {
        let a = f32s(&[2, 2], &[1., 2., 3., 4.]);
        let b = f32s(&[2], &[10., 20.]);
        assert_eq!(CpuOps.add(&a, &b).unwrap().data(), &TensorData::Float32(vec![11., 22., 13., 24.]));
        assert!(CpuOps.add(&b, &a).is_err());
    }

    #[test]
    fn relu_and_softmax() {
        let x = f32s(&[1, 3], &[-1., 0., 2.]);
        assert_eq!(CpuOps.relu(&x).unwrap().data(), &TensorData::Float32(vec![0., 0., 2.]));
        let s = CpuOps.softmax(&x, -1).unwrap();
        let TensorData::Float32(v) = s.data() else { panic!() };
        let sum: f32 = v.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(v[2] > v[1] && v[1] > v[0]);
        assert!(CpuOps.softmax(&x, 2).is_err());
    }

    #[test]
    fn integer_ops_are_refused_with_dtype() {
        let x = Tensor::new(vec![1], TensorData::Int64(vec![1])).unwrap();
        let err = CpuOps.relu(&x).unwrap_err();
        assert_eq!(err, TensorError::bad("relu on the cpu device takes float32 or float64, got int64"));
    }
}
