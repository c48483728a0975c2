//! The conformance kit (`wasmscore plugin check PATH.so`): runs every op x
//! dtype a plugin declares against a straightforward CPU reference, over
//! shapes and edge cases (odd sizes, empty dimensions, a large case, buffers
//! deliberately unaligned), and checks that bad calls come back as returned
//! errors, not crashes. Integer outputs must be bit-exact; float outputs
//! within `tolerance` x the largest reference magnitude (a quantizing
//! device is allowed that much; the report shows the worst error).

use wasmscore_plugin_sdk::abi::{Capability, DType, OpKind, OpParams, Status};

use crate::{HostTensor, Plugin};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub op: &'static str,
    pub dtype: &'static str,
    pub case: String,
    pub passed: bool,
    pub detail: String,
    pub cycles: u64,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    pub plugin: String,
    pub abi: (u32, u32),
    pub rows: Vec<Row>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.passed)
    }

    /// A fixed-width table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "plugin {} (ABI {}.{}): {} checks, {} failed\n",
            self.plugin,
            self.abi.0,
            self.abi.1,
            self.rows.len(),
            self.rows.iter().filter(|r| !r.passed).count()
        );
        s.push_str(&format!(
            "{:<8} {:<8} {:<44} {:<5} {:>10}  {}\n",
            "op", "dtype", "case", "", "cycles", "detail"
        ));
        for r in &self.rows {
            s.push_str(&format!(
                "{:<8} {:<8} {:<44} {:<5} {:>10}  {}\n",
                r.op,
                r.dtype,
                r.case,
                if r.passed { "PASS" } else { "FAIL" },
                r.cycles,
                r.detail
            ));
        }
        s
    }
}

/// Deterministic test data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> i64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as i64
    }
    fn ints(&mut self, n: usize, dtype: DType) -> Vec<i64> {
        let half = match dtype {
            DType::Int8 => 128,
            DType::Int16 => 32768,
            _ => 1 << 20,
        };
        (0..n).map(|_| self.next() % (2 * half) - half).collect()
    }
    fn floats(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| (self.next() % 2001 - 1000) as f64 / 250.0).collect()
    }
}

fn encode(dtype: DType, v: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * dtype.size());
    for x in v {
        match dtype {
            DType::Int8 => out.push(*x as i8 as u8),
            DType::Int16 => out.extend_from_slice(&(*x as i16).to_le_bytes()),
            DType::Int32 => out.extend_from_slice(&(*x as i32).to_le_bytes()),
            DType::Float32 => out.extend_from_slice(&(*x as f32).to_le_bytes()),
            DType::Float64 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    out
}

fn decode(dtype: DType, b: &[u8]) -> Vec<f64> {
    match dtype {
        DType::Int32 => b
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DType::Float32 => b
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DType::Float64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        DType::Int8 => b.iter().map(|x| f64::from(*x as i8)).collect(),
        DType::Int16 => b.chunks_exact(2).map(|c| f64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
    }
}

/// What an op returns for an input dtype (integers accumulate in int32).
fn out_dtype(d: DType) -> DType {
    match d {
        DType::Int8 | DType::Int16 | DType::Int32 => DType::Int32,
        f => f,
    }
}

/// The reference matmul: int32 wrapping for integers, f64 for floats.
fn ref_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, int: bool) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            if int {
                let mut acc = 0i32;
                for p in 0..k {
                    acc = acc.wrapping_add((a[i * k + p] as i32).wrapping_mul(b[p * n + j] as i32));
                }
                c[i * n + j] = f64::from(acc);
            } else {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
    }
    c
}

fn transpose(v: &[f64], r: usize, c: usize) -> Vec<f64> {
    (0..r * c).map(|i| v[(i % r) * c + i / r]).collect()
}

#[allow(clippy::too_many_arguments)]
fn ref_conv(
    x: &[f64],
    w: &[f64],
    (nb, c, h, wi): (usize, usize, usize, usize),
    (o, kh, kw): (usize, usize, usize),
    s: [usize; 2],
    p: [usize; 2],
    int: bool,
) -> (Vec<f64>, usize, usize) {
    let ho = (h + 2 * p[0] - kh) / s[0] + 1;
    let wo = (wi + 2 * p[1] - kw) / s[1] + 1;
    let mut y = vec![0f64; nb * o * ho * wo];
    for b in 0..nb {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut acc_i, mut acc_f) = (0i32, 0f64);
                    for ch in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s[0] + ky) as isize - p[0] as isize;
                                let ix = (ox * s[1] + kx) as isize - p[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wi {
                                    continue;
                                }
                                let xv = x[((b * c + ch) * h + iy as usize) * wi + ix as usize];
                                let wv = w[((oc * c + ch) * kh + ky) * kw + kx];
                                if int {
                                    acc_i = acc_i.wrapping_add((xv as i32).wrapping_mul(wv as i32));
                                } else {
                                    acc_f += xv * wv;
                                }
                            }
                        }
                    }
                    y[((b * o + oc) * ho + oy) * wo + ox] = if int { f64::from(acc_i) } else { acc_f };
                }
            }
        }
    }
    (y, ho, wo)
}

/// Compares a plugin's output with the reference.
fn compare(got: &[f64], want: &[f64], int: bool, tolerance: f64) -> Result<String, String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, want {}", got.len(), want.len()));
    }
    if int {
        return match got.iter().zip(want).position(|(g, w)| g != w) {
            None => Ok("bit-exact".into()),
            Some(i) => Err(format!("element {i}: {} != {}", got[i], want[i])),
        };
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
    if got.iter().any(|g| !g.is_finite()) {
        return Err("a non-finite element".into());
    }
    let rel = worst / scale;
    if rel <= tolerance {
        Ok(format!("max error {:.4}% of max |ref|", rel * 100.0))
    } else {
        Err(format!("max error {:.4}% of max |ref| > {:.2}%", rel * 100.0, tolerance * 100.0))
    }
}

struct Case {
    name: String,
    inputs: Vec<HostTensor>,
    params: OpParams,
    out_shape: Vec<i64>,
    want: Vec<f64>,
}

fn tensor(dtype: DType, shape: &[usize], v: &[f64], offset: usize) -> HostTensor {
    HostTensor::new(dtype, shape.iter().map(|d| *d as i64).collect(), &encode(dtype, v), offset)
}

fn cases(cap: &Capability, rng: &mut Lcg) -> Vec<Case> {
    let d = cap.dtype;
    let int = !matches!(d, DType::Float32 | DType::Float64);
    let data = |rng: &mut Lcg, n: usize| -> Vec<f64> {
        if int {
            rng.ints(n, d).into_iter().map(|x| x as f64).collect()
        } else {
            rng.floats(n)
        }
    };
    let fits = |dims: &[usize]| dims.iter().all(|x| (*x as i64) <= cap.max_dim);
    let mut out = Vec::new();
    match cap.op {
        OpKind::MatMul | OpKind::Gemm => {
            let shapes = [
                (1, 1, 1),
                (3, 5, 7),
                (16, 16, 16),
                (17, 33, 15),
                (128, 256, 64),
                (0, 4, 4),
                (4, 0, 4),
                (4, 4, 0),
            ];
            for (m, k, n) in shapes {
                if !fits(&[m, k, n]) {
                    continue;
                }
                for offset in [0usize, 1] {
                    let (a, b) = (data(rng, m * k), data(rng, k * n));
                    if cap.op == OpKind::MatMul {
                        out.push(Case {
                            name: format!("{m}x{k}x{n}{}", if offset > 0 { ", unaligned" } else { "" }),
                            inputs: vec![tensor(d, &[m, k], &a, offset), tensor(d, &[k, n], &b, offset)],
                            params: OpParams::default(),
                            out_shape: vec![m as i64, n as i64],
                            want: ref_matmul(&a, &b, m, k, n, int),
                        });
                    } else {
                        // gemm: transposed A, bias over columns, alpha and beta.
                        let at = transpose(&a, m, k); // stored [k, m]
                        let bias = data(rng, n);
                        let (alpha, beta) = (0.5f32, 2.0f32);
                        let mm = ref_matmul(&a, &b, m, k, n, int);
                        let want = (0..m * n)
                            .map(|i| f64::from(alpha) * mm[i] + f64::from(beta) * bias[i % n.max(1)])
                            .collect();
                        out.push(Case {
                            name: format!("{m}x{k}x{n} transA, bias [n]{}", if offset > 0 { ", unaligned" } else { "" }),
                            inputs: vec![
                                tensor(d, &[k, m], &at, offset),
                                tensor(d, &[k, n], &b, offset),
                                tensor(d, &[n], &bias, offset),
                            ],
                            params: OpParams {
                                alpha,
                                beta,
                                trans_a: 1,
                                ..OpParams::default()
                            },
                            out_shape: vec![m as i64, n as i64],
                            want,
                        });
                    }
                }
            }
        }
        OpKind::Conv2d => {
            // (n, c, h, w, o, kh, kw, stride, pad)
            let shapes = [
                (1, 1, 5, 5, 1, 3, 3, 1, 0),
                (2, 3, 8, 7, 4, 3, 3, 2, 1),
                (1, 2, 1, 1, 3, 1, 1, 1, 0),
                (1, 3, 16, 16, 8, 5, 5, 1, 2),
                (0, 2, 4, 4, 2, 3, 3, 1, 1),
            ];
            for (nb, c, h, w, o, kh, kw, s, p) in shapes {
                for offset in [0usize, 1] {
                    let (x, wt) = (data(rng, nb * c * h * w), data(rng, o * c * kh * kw));
                    let (want, ho, wo) = ref_conv(&x, &wt, (nb, c, h, w), (o, kh, kw), [s, s], [p, p], int);
                    out.push(Case {
                        name: format!(
                            "x[{nb},{c},{h},{w}] w[{o},{c},{kh},{kw}] s{s} p{p}{}",
                            if offset > 0 { ", unaligned" } else { "" }
                        ),
                        inputs: vec![tensor(d, &[nb, c, h, w], &x, offset), tensor(d, &[o, c, kh, kw], &wt, offset)],
                        params: OpParams {
                            stride: [s as u32; 2],
                            pad: [p as u32; 2],
                            ..OpParams::default()
                        },
                        out_shape: vec![nb as i64, o as i64, ho as i64, wo as i64],
                        want,
                    });
                }
            }
        }
    }
    out
}

/// Runs the kit against the plugin at `path`.
pub fn check(plugin: &std::sync::Arc<Plugin>, tolerance: f64) -> Report {
    let mut rows = Vec::new();
    let mut rng = Lcg(0x5eed);
    let mut instance = match plugin.instance("conformance") {
        Ok(i) => i,
        Err(e) => {
            rows.push(Row {
                op: "-",
                dtype: "-",
                case: "version_init + instance_init".into(),
                passed: false,
                detail: e.to_string(),
                cycles: 0,
            });
            return Report {
                plugin: plugin.name.clone(),
                abi: plugin.abi_version(),
                rows,
            };
        }
    };
    if plugin.capabilities().is_empty() {
        rows.push(Row {
            op: "-",
            dtype: "-",
            case: "capabilities".into(),
            passed: false,
            detail: "the plugin declares no op".into(),
            cycles: 0,
        });
    }
    for cap in plugin.capabilities() {
        let int = !matches!(cap.dtype, DType::Float32 | DType::Float64);
        for mut case in cases(cap, &mut rng) {
            let mut output = HostTensor::zeros(out_dtype(cap.dtype), case.out_shape.clone(), 0);
            let (passed, detail, cycles) = match instance.execute(cap.op, &case.params, &mut case.inputs, &mut output) {
                Ok(stats) => match compare(&decode(output.dtype, output.bytes()), &case.want, int, tolerance) {
                    Ok(d) => (true, d, stats.device_cycles),
                    Err(d) => (false, d, stats.device_cycles),
                },
                Err(e) => (false, format!("returned an error: {e}"), 0),
            };
            rows.push(Row {
                op: cap.op.name(),
                dtype: cap.dtype.name(),
                case: case.name,
                passed,
                detail,
                cycles,
            });
        }
        // Bad calls must come back as errors: a shape that does not fit.
        let bad = vec![
            HostTensor::zeros(
                cap.dtype,
                vec![2, 3, 1, 1][..if cap.op == OpKind::Conv2d { 4 } else { 2 }].to_vec(),
                0,
            ),
            HostTensor::zeros(
                cap.dtype,
                vec![5, 7, 1, 1][..if cap.op == OpKind::Conv2d { 4 } else { 2 }].to_vec(),
                0,
            ),
        ];
        let mut inputs = bad;
        let mut output = HostTensor::zeros(out_dtype(cap.dtype), vec![2, 7], 0);
        let r = instance.execute(cap.op, &OpParams::default(), &mut inputs, &mut output);
        rows.push(Row {
            op: cap.op.name(),
            dtype: cap.dtype.name(),
            case: "shapes that do not fit -> returned error".into(),
            passed: matches!(&r, Err(e) if e.code == Status::InvalidArgument),
            detail: match r {
                Ok(_) => "accepted".into(),
                Err(e) => e.to_string(),
            },
            cycles: 0,
        });
    }
    Report {
        plugin: plugin.name.clone(),
        abi: plugin.abi_version(),
        rows,
    }
}
