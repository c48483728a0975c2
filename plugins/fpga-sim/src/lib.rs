//! fpga-sim: a **simulated** FPGA accelerator behind the wasmscore device
//! plugin ABI, for platform teams to see what a plugin looks like and for
//! the conformance kit to check. It is a simulator, not hardware.
//!
//! It models a 16x16 weight-stationary systolic array of int8 (or int16)
//! multiply-accumulate cells with int32 accumulators (wrapping, as hardware
//! does): MatMul, Gemm and Conv2d (as im2col + the same array). float32 ops
//! are quantized at its boundary (symmetric per-tensor scale to int8, round
//! half away from zero), computed in int8 and dequantized. Deterministic.
//! Each op reports a cycle count from the array's dataflow (weight load,
//! fill, stream, drain, and the quantizer's 16-wide vector passes), and
//! that count at the simulated fabric clock (`clock_mhz` in its config,
//! default 250 MHz) as its device time.

use wasmscore_plugin_sdk::{export_plugin, Capability, DType, OpKind, OpParams, Plugin, PluginError, Stats, TensorMut, TensorRef};

/// The array is ARRAY x ARRAY cells.
pub const ARRAY: usize = 16;
/// Largest dimension it takes (its on-chip buffers, as a real part would say).
pub const MAX_DIM: i64 = 4096;

/// The simulated fabric clock unless the config names one.
pub const DEFAULT_CLOCK_MHZ: u64 = 250;

pub struct FpgaSim {
    clock_mhz: u64,
}

/// `{"clock_mhz": N}` (1..=1000); anything else in the config is refused.
fn clock_from_config(config: &str) -> Result<u64, PluginError> {
    let t: String = config.chars().filter(|c| !c.is_whitespace()).collect();
    if t.is_empty() || t == "{}" {
        return Ok(DEFAULT_CLOCK_MHZ);
    }
    let n = t
        .strip_prefix("{\"clock_mhz\":")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| (1..=1000).contains(n));
    n.ok_or_else(|| PluginError::invalid(format!("fpga-sim's config is {{\"clock_mhz\": 1..=1000}}, got {config}")))
}

impl Plugin for FpgaSim {
    const NAME: &'static str = "fpga-sim";
    const DESCRIPTION: &'static str = "simulated FPGA: 16x16 int8/int16 systolic array, float32 quantized to int8 at the boundary";

    fn initialize(config_json: &str) -> Result<Self, PluginError> {
        Ok(FpgaSim {
            clock_mhz: clock_from_config(config_json)?,
        })
    }

    fn capabilities(&self) -> Vec<Capability> {
        let c = |op, dtype, max_rank| Capability::host(op, dtype, max_rank, MAX_DIM);
        vec![
            c(OpKind::MatMul, DType::Int8, 2),
            c(OpKind::MatMul, DType::Int16, 2),
            c(OpKind::MatMul, DType::Float32, 2),
            c(OpKind::Gemm, DType::Float32, 2),
            c(OpKind::Conv2d, DType::Int8, 4),
            c(OpKind::Conv2d, DType::Float32, 4),
        ]
    }

    fn execute(&self, op: OpKind, params: &OpParams, inputs: &[TensorRef<'_>], out: &mut TensorMut<'_>) -> Result<Stats, PluginError> {
        let mut stats = match op {
            OpKind::MatMul => matmul_op(inputs, out),
            OpKind::Gemm => gemm_op(params, inputs, out),
            OpKind::Conv2d => conv_op(params, inputs, out),
        }?;
        stats.device_ns = stats.device_cycles * 1000 / self.clock_mhz;
        Ok(stats)
    }
}

export_plugin!(FpgaSim);

// ---- element access (buffers may be unaligned: read bytes, little endian) ----

fn read_i32s(dtype: DType, b: &[u8]) -> Vec<i32> {
    match dtype {
        DType::Int8 => b.iter().map(|x| i32::from(*x as i8)).collect(),
        DType::Int16 => b.chunks_exact(2).map(|c| i32::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::Int32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        _ => Vec::new(),
    }
}

fn read_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn write_i32s(out: &mut [u8], v: &[i32]) {
    for (c, x) in out.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

fn write_f32s(out: &mut [u8], v: &[f32]) {
    for (c, x) in out.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

fn dims(t: &[i64], want: usize, what: &str) -> Result<Vec<usize>, PluginError> {
    if t.len() != want {
        return Err(PluginError::invalid(format!("{what} must be {want}-D, got {t:?}")));
    }
    t.iter()
        .map(|d| {
            if *d < 0 || *d > MAX_DIM {
                Err(PluginError::invalid(format!("{what}: dimension {d} outside 0..={MAX_DIM}")))
            } else {
                Ok(*d as usize)
            }
        })
        .collect()
}

fn check_len(t: &TensorRef<'_>, n: usize, what: &str) -> Result<(), PluginError> {
    if t.bytes.len() != n * t.dtype.size() {
        return Err(PluginError::invalid(format!(
            "{what}: {} bytes for {n} {} elements",
            t.bytes.len(),
            t.dtype.name()
        )));
    }
    Ok(())
}

// ---- quantization at the boundary ----

/// Symmetric per-tensor int8 quantization: scale = max|x| / 127.
pub fn quantize(x: &[f32]) -> (Vec<i32>, f32) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![0; x.len()], 1.0);
    }
    let scale = max / 127.0;
    (x.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i32).collect(), scale)
}

fn quantize_cycles(n: usize) -> u64 {
    n.div_ceil(ARRAY) as u64
}

// ---- the systolic array ----

/// C[m,n] = A[m,k] x B[k,n] in int32 (wrapping), computed tile by tile the
/// way the array streams it; returns the result and the cycles it took.
pub fn systolic_matmul(a: &[i32], b: &[i32], m: usize, k: usize, n: usize) -> (Vec<i32>, u64) {
    let mut c = vec![0i32; m * n];
    let mut cycles = 0u64;
    for k0 in (0..k).step_by(ARRAY) {
        let kt = ARRAY.min(k - k0);
        for n0 in (0..n).step_by(ARRAY) {
            let nt = ARRAY.min(n - n0);
            // Load a kt x nt block of weights (one row per cycle), then stream
            // the m rows of A through: fill and drain take 2 * ARRAY - 2.
            cycles += ARRAY as u64 + m as u64 + 2 * ARRAY as u64 - 2;
            for i in 0..m {
                for j in 0..nt {
                    let mut acc = c[i * n + n0 + j];
                    for p in 0..kt {
                        acc = acc.wrapping_add(a[i * k + k0 + p].wrapping_mul(b[(k0 + p) * n + n0 + j]));
                    }
                    c[i * n + n0 + j] = acc;
                }
            }
        }
    }
    (c, cycles)
}

fn matmul_op(inputs: &[TensorRef<'_>], out: &mut TensorMut<'_>) -> Result<Stats, PluginError> {
    let [a, b] = inputs else {
        return Err(PluginError::invalid(format!("matmul takes 2 inputs, got {}", inputs.len())));
    };
    let (ad, bd) = (dims(a.shape, 2, "matmul: a")?, dims(b.shape, 2, "matmul: b")?);
    let (m, k, n) = (ad[0], ad[1], bd[1]);
    if bd[0] != k || a.dtype != b.dtype {
        return Err(PluginError::invalid(format!(
            "matmul: a {:?} {} and b {:?} {} do not fit",
            a.shape,
            a.dtype.name(),
            b.shape,
            b.dtype.name()
        )));
    }
    check_len(a, m * k, "matmul: a")?;
    check_len(b, k * n, "matmul: b")?;
    expect_out(out, &[m, n], if a.dtype == DType::Float32 { DType::Float32 } else { DType::Int32 })?;
    match a.dtype {
        DType::Int8 | DType::Int16 => {
            let (c, cycles) = systolic_matmul(&read_i32s(a.dtype, a.bytes), &read_i32s(b.dtype, b.bytes), m, k, n);
            write_i32s(out.bytes, &c);
            Ok(Stats {
                device_cycles: cycles,
                device_ns: 0,
            })
        }
        DType::Float32 => {
            let (qa, sa) = quantize(&read_f32s(a.bytes));
            let (qb, sb) = quantize(&read_f32s(b.bytes));
            let (c, cycles) = systolic_matmul(&qa, &qb, m, k, n);
            let deq: Vec<f32> = c.iter().map(|v| *v as f32 * sa * sb).collect();
            write_f32s(out.bytes, &deq);
            Ok(Stats {
                device_cycles: cycles + quantize_cycles(m * k + k * n) + quantize_cycles(m * n),
                device_ns: 0,
            })
        }
        d => Err(PluginError::unsupported(format!(
            "matmul on {} is not in fpga-sim's capabilities",
            d.name()
        ))),
    }
}

fn expect_out(out: &TensorMut<'_>, shape: &[usize], dtype: DType) -> Result<(), PluginError> {
    let got: Vec<usize> = out.shape.iter().map(|d| *d as usize).collect();
    let n: usize = shape.iter().product();
    if got != shape || out.dtype != dtype || out.bytes.len() != n * dtype.size() {
        return Err(PluginError::invalid(format!(
            "output must be {shape:?} {} ({} bytes), got {:?} {} ({} bytes)",
            dtype.name(),
            n * dtype.size(),
            out.shape,
            out.dtype.name(),
            out.bytes.len()
        )));
    }
    Ok(())
}

fn gemm_op(p: &OpParams, inputs: &[TensorRef<'_>], out: &mut TensorMut<'_>) -> Result<Stats, PluginError> {
    if inputs.len() != 2 && inputs.len() != 3 {
        return Err(PluginError::invalid(format!("gemm takes 2 or 3 inputs, got {}", inputs.len())));
    }
    let (a, b) = (&inputs[0], &inputs[1]);
    if a.dtype != DType::Float32 || b.dtype != DType::Float32 {
        return Err(PluginError::unsupported("fpga-sim's gemm is float32 only"));
    }
    let (ad, bd) = (dims(a.shape, 2, "gemm: a")?, dims(b.shape, 2, "gemm: b")?);
    check_len(a, ad[0] * ad[1], "gemm: a")?;
    check_len(b, bd[0] * bd[1], "gemm: b")?;
    let (m, k) = if p.trans_a != 0 { (ad[1], ad[0]) } else { (ad[0], ad[1]) };
    let (k2, n) = if p.trans_b != 0 { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
    if k != k2 {
        return Err(PluginError::invalid(format!(
            "gemm: inner dimensions differ: {:?} and {:?}",
            a.shape, b.shape
        )));
    }
    expect_out(out, &[m, n], DType::Float32)?;
    let transpose = |v: Vec<f32>, r: usize, c: usize| -> Vec<f32> { (0..c * r).map(|i| v[(i % r) * c + i / r]).collect() };
    let av = read_f32s(a.bytes);
    let bv = read_f32s(b.bytes);
    let av = if p.trans_a != 0 { transpose(av, ad[0], ad[1]) } else { av };
    let bv = if p.trans_b != 0 { transpose(bv, bd[0], bd[1]) } else { bv };
    let (qa, sa) = quantize(&av);
    let (qb, sb) = quantize(&bv);
    let (c, cycles) = systolic_matmul(&qa, &qb, m, k, n);
    let mut y: Vec<f32> = c.iter().map(|v| p.alpha * (*v as f32 * sa * sb)).collect();
    if let Some(bias) = inputs.get(2) {
        if bias.dtype != DType::Float32 {
            return Err(PluginError::invalid("gemm: bias must be float32"));
        }
        let bv = read_f32s(bias.bytes);
        let (br, bc) = match bias.shape {
            [] => (1, 1),
            [x] => (1, *x as usize),
            [r, c] => (*r as usize, *c as usize),
            s => return Err(PluginError::invalid(format!("gemm: bias must be at most 2-D, got {s:?}"))),
        };
        if !(br == 1 || br == m) || !(bc == 1 || bc == n) || bv.len() != br * bc {
            return Err(PluginError::invalid(format!(
                "gemm: bias {:?} does not broadcast to [{m}, {n}]",
                bias.shape
            )));
        }
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] += p.beta * bv[(if br == 1 { 0 } else { i }) * bc + if bc == 1 { 0 } else { j }];
            }
        }
    }
    write_f32s(out.bytes, &y);
    Ok(Stats {
        device_cycles: cycles + quantize_cycles(m * k + k * n) + 2 * quantize_cycles(m * n),
        device_ns: 0,
    })
}

/// Output size of one spatial dimension.
pub fn conv_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    if stride == 0 || size + 2 * pad < kernel {
        return None;
    }
    Some((size + 2 * pad - kernel) / stride + 1)
}

fn conv_op(p: &OpParams, inputs: &[TensorRef<'_>], out: &mut TensorMut<'_>) -> Result<Stats, PluginError> {
    let [x, w] = inputs else {
        return Err(PluginError::unsupported(format!(
            "fpga-sim's conv2d takes 2 inputs (no bias), got {}",
            inputs.len()
        )));
    };
    let (xd, wd) = (dims(x.shape, 4, "conv2d: x")?, dims(w.shape, 4, "conv2d: w")?);
    let (nb, c, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (o, ci, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    if ci != c || x.dtype != w.dtype {
        return Err(PluginError::invalid(format!(
            "conv2d: x {:?} and w {:?} do not fit",
            x.shape, w.shape
        )));
    }
    let (sh, sw, ph, pw) = (p.stride[0] as usize, p.stride[1] as usize, p.pad[0] as usize, p.pad[1] as usize);
    let (Some(ho), Some(wo)) = (conv_out(h, kh, sh, ph), conv_out(wi, kw, sw, pw)) else {
        return Err(PluginError::invalid(
            "conv2d: the kernel does not fit the padded input, or a stride is 0",
        ));
    };
    check_len(x, nb * c * h * wi, "conv2d: x")?;
    check_len(w, o * c * kh * kw, "conv2d: w")?;
    let float = x.dtype == DType::Float32;
    expect_out(out, &[nb, o, ho, wo], if float { DType::Float32 } else { DType::Int32 })?;
    let ((xq, sx), (wq, sw_)) = match x.dtype {
        DType::Float32 => (quantize(&read_f32s(x.bytes)), quantize(&read_f32s(w.bytes))),
        DType::Int8 => ((read_i32s(x.dtype, x.bytes), 1.0), (read_i32s(w.dtype, w.bytes), 1.0)),
        d => {
            return Err(PluginError::unsupported(format!(
                "conv2d on {} is not in fpga-sim's capabilities",
                d.name()
            )))
        }
    };
    // im2col: rows are output pixels, columns are (c, kh, kw).
    let (rows, k) = (nb * ho * wo, c * kh * kw);
    let mut cols = vec![0i32; rows * k];
    for b in 0..nb {
        for oy in 0..ho {
            for ox in 0..wo {
                let r = (b * ho + oy) * wo + ox;
                for ch in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (iy, ix) = ((oy * sh + ky) as isize - ph as isize, (ox * sw + kx) as isize - pw as isize);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wi {
                                cols[r * k + (ch * kh + ky) * kw + kx] = xq[((b * c + ch) * h + iy as usize) * wi + ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    // Weights as [k, o].
    let wt: Vec<i32> = (0..k * o).map(|i| wq[(i % o) * k + i / o]).collect();
    let (y, cycles) = systolic_matmul(&cols, &wt, rows, k, o);
    // [rows, o] -> NCHW.
    let mut nchw = vec![0i32; nb * o * ho * wo];
    for b in 0..nb {
        for oc in 0..o {
            for pix in 0..ho * wo {
                nchw[(b * o + oc) * ho * wo + pix] = y[(b * ho * wo + pix) * o + oc];
            }
        }
    }
    let mut cycles = cycles + quantize_cycles(rows * k);
    if float {
        let v: Vec<f32> = nchw.iter().map(|q| *q as f32 * sx * sw_).collect();
        write_f32s(out.bytes, &v);
        cycles += quantize_cycles(nb * c * h * wi + o * k) + quantize_cycles(v.len());
    } else {
        write_i32s(out.bytes, &nchw);
    }
    Ok(Stats {
        device_cycles: cycles,
        device_ns: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_comes_from_the_config() {
        assert_eq!(clock_from_config("{}").unwrap(), DEFAULT_CLOCK_MHZ);
        assert_eq!(clock_from_config("").unwrap(), DEFAULT_CLOCK_MHZ);
        assert_eq!(clock_from_config("{ \"clock_mhz\": 500 }").unwrap(), 500);
        for bad in ["{\"clock_mhz\": 0}", "{\"clock\": 5}", "nonsense"] {
            assert!(clock_from_config(bad).is_err(), "{bad}");
        }
        let sim = FpgaSim::initialize("{\"clock_mhz\": 100}").unwrap();
        let a = [1u8; 16 * 16];
        let mut out = [0u8; 16 * 16 * 4];
        let stats = sim
            .execute(
                OpKind::MatMul,
                &OpParams::default(),
                &[
                    TensorRef {
                        dtype: DType::Int8,
                        shape: &[16, 16],
                        bytes: &a,
                    },
                    TensorRef {
                        dtype: DType::Int8,
                        shape: &[16, 16],
                        bytes: &a,
                    },
                ],
                &mut TensorMut {
                    dtype: DType::Int32,
                    shape: &[16, 16],
                    bytes: &mut out,
                },
            )
            .unwrap();
        assert!(stats.device_cycles > 0);
        assert_eq!(stats.device_ns, stats.device_cycles * 10, "100 MHz: 10 ns a cycle");
    }

    /// The straightforward reference: three loops, int32 wrapping.
    fn reference(a: &[i32], b: &[i32], m: usize, k: usize, n: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i32;
                for p in 0..k {
                    acc = acc.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
                }
                c[i * n + j] = acc;
            }
        }
        c
    }

    fn lcg(seed: &mut u64) -> i32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as i32
    }

    #[test]
    fn the_systolic_model_is_bit_exact_against_the_reference() {
        let mut s = 42u64;
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (16, 16, 16),
            (17, 33, 15),
            (64, 100, 40),
            (0, 4, 4),
            (4, 0, 4),
        ] {
            for range in [256, 65536] {
                let a: Vec<i32> = (0..m * k).map(|_| lcg(&mut s) % range - range / 2).collect();
                let b: Vec<i32> = (0..k * n).map(|_| lcg(&mut s) % range - range / 2).collect();
                let (c, cycles) = systolic_matmul(&a, &b, m, k, n);
                assert_eq!(c, reference(&a, &b, m, k, n), "{m}x{k}x{n} range {range}");
                let tiles = (k.div_ceil(ARRAY) * n.div_ceil(ARRAY)) as u64;
                assert_eq!(cycles, tiles * (ARRAY as u64 + m as u64 + 2 * ARRAY as u64 - 2));
            }
        }
    }

    #[test]
    fn quantization_is_symmetric_and_deterministic() {
        let (q, s) = quantize(&[-2.0, 0.0, 1.0, 2.0]);
        assert_eq!(q, vec![-127, 0, 64, 127]);
        assert!((s - 2.0 / 127.0).abs() < 1e-9);
        assert_eq!(quantize(&[0.0, 0.0]).0, vec![0, 0]);
    }
}
