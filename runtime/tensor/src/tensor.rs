//! The tensor type: a shape and typed, row-major data.

use crate::TensorError;

/// Element types, as in ONNX. The names are ONNX's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float64,
    /// IEEE 754 half precision (OIP's FP16).
    Float16,
    /// bfloat16, the upper half of a float32 (OIP's BF16).
    Bfloat16,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Bool,
    String,
}

impl DType {
    /// Bytes per element (a string counts as a pointer-sized handle).
    pub fn width(self) -> usize {
        match self {
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Int16 | DType::Uint16 | DType::Float16 | DType::Bfloat16 => 2,
            DType::Float32 | DType::Int32 | DType::Uint32 => 4,
            DType::Float64 | DType::Int64 | DType::Uint64 => 8,
            DType::String => std::mem::size_of::<String>(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Uint32 => "uint32",
            DType::Uint64 => "uint64",
            DType::Bool => "bool",
            DType::String => "string",
        }
    }
}

/// A tensor's elements, typed. One variant per supported dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Float16(Vec<half::f16>),
    Bfloat16(Vec<half::bf16>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    /// A string tensor with at least one element that is not UTF-8 (an
    /// image in an OIP BYTES tensor). Its dtype is `String`; make it with
    /// [`TensorData::from_byte_strings`], which keeps text as `String`.
    Bytes(Vec<Vec<u8>>),
}

/// Calls `$body` with `$v` bound to the inner Vec, whatever the variant.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Float32($v) => $body,
            $crate::TensorData::Float64($v) => $body,
            $crate::TensorData::Float16($v) => $body,
            $crate::TensorData::Bfloat16($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::String($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Float32(_) => DType::Float32,
            TensorData::Float64(_) => DType::Float64,
            TensorData::Float16(_) => DType::Float16,
            TensorData::Bfloat16(_) => DType::Bfloat16,
            TensorData::Int8(_) => DType::Int8,
            TensorData::Int16(_) => DType::Int16,
            TensorData::Int32(_) => DType::Int32,
            TensorData::Int64(_) => DType::Int64,
            TensorData::Uint8(_) => DType::Uint8,
            TensorData::Uint16(_) => DType::Uint16,
            TensorData::Uint32(_) => DType::Uint32,
            TensorData::Uint64(_) => DType::Uint64,
            TensorData::Bool(_) => DType::Bool,
            TensorData::String(_) | TensorData::Bytes(_) => DType::String,
        }
    }

    /// A string tensor's data from its elements' bytes: `String` when every
    /// element is UTF-8, `Bytes` otherwise.
    pub fn from_byte_strings(elements: Vec<Vec<u8>>) -> TensorData {
        if elements.iter().all(|e| std::str::from_utf8(e).is_ok()) {
            TensorData::String(elements.into_iter().map(|e| String::from_utf8(e).expect("checked")).collect())
        } else {
            TensorData::Bytes(elements)
        }
    }

    /// A string tensor's elements as bytes; None for another dtype.
    pub fn byte_strings(&self) -> Option<Vec<&[u8]>> {
        match self {
            TensorData::String(v) => Some(v.iter().map(|s| s.as_bytes()).collect()),
            TensorData::Bytes(v) => Some(v.iter().map(Vec::as_slice).collect()),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the data takes on the host (strings count their UTF-8 length).
    pub fn byte_size(&self) -> usize {
        match self {
            TensorData::String(v) => v.iter().map(|s| s.len() + std::mem::size_of::<String>()).sum(),
            TensorData::Bytes(v) => v.iter().map(|s| s.len() + std::mem::size_of::<Vec<u8>>()).sum(),
            TensorData::Bool(v) => v.len(),
            other => with_data!(other, v => std::mem::size_of_val(v.as_slice())),
        }
    }
}

/// The most dimensions a tensor has (numpy's NPY_MAXDIMS): a shape is
/// held on the host whatever its element count.
pub const MAX_RANK: usize = 64;

/// A tensor held by the host: shape plus row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<u64>,
    data: TensorData,
}

impl Tensor {
    /// Makes a tensor, checking that the element count matches the shape.
    pub fn new(shape: Vec<u64>, data: TensorData) -> Result<Self, TensorError> {
        if shape.len() > MAX_RANK {
            return Err(TensorError::bad(format!(
                "a shape of {} dimensions; a tensor has at most {MAX_RANK} (numpy's limit)",
                shape.len()
            )));
        }
        let expected = element_count(&shape)?;
        if expected != data.len() as u64 {
            return Err(TensorError::bad(format!(
                "shape {:?} needs {} elements, got {}",
                shape,
                expected,
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[u64] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn data(&self) -> &TensorData {
        &self.data
    }
    pub fn into_parts(self) -> (Vec<u64>, TensorData) {
        (self.shape, self.data)
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Product of the dimensions, refusing overflow (a hostile shape must not wrap).
pub fn element_count(shape: &[u64]) -> Result<u64, TensorError> {
    shape.iter().try_fold(1u64, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| TensorError::bad(format!("shape {shape:?} has too many elements")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_element_count() {
        assert!(Tensor::new(vec![2, 2], TensorData::Float32(vec![1.0; 4])).is_ok());
        let err = Tensor::new(vec![2, 3], TensorData::Float32(vec![1.0; 4])).unwrap_err();
        assert_eq!(err, TensorError::bad("shape [2, 3] needs 6 elements, got 4"));
    }

    #[test]
    fn overflowing_shape_is_bad_input() {
        let err = Tensor::new(vec![u64::MAX, 3], TensorData::Int8(vec![])).unwrap_err();
        assert!(matches!(err, TensorError::BadInput(_)));
    }

    #[test]
    fn scalar_has_one_element() {
        let t = Tensor::new(vec![], TensorData::Int64(vec![7])).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.dtype(), DType::Int64);
    }
}
