use super::*;
use wasmscore_tensor::half::{bf16, f16};

fn t(shape: &[u64], data: TensorData) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn every_dtype() -> Vec<(String, Tensor)> {
    vec![
        ("b".into(), t(&[2], TensorData::Bool(vec![true, false]))),
        ("u8".into(), t(&[2], TensorData::Uint8(vec![0, 255]))),
        ("u16".into(), t(&[2], TensorData::Uint16(vec![1, 65535]))),
        ("u32".into(), t(&[1, 2], TensorData::Uint32(vec![7, u32::MAX]))),
        ("u64".into(), t(&[2], TensorData::Uint64(vec![0, u64::MAX]))),
        ("i8".into(), t(&[2], TensorData::Int8(vec![-128, 127]))),
        ("i16".into(), t(&[2], TensorData::Int16(vec![-3, 4]))),
        ("i32".into(), t(&[2, 1], TensorData::Int32(vec![-5, 6]))),
        ("i64".into(), t(&[2], TensorData::Int64(vec![i64::MIN, i64::MAX]))),
        ("f32".into(), t(&[2, 2], TensorData::Float32(vec![0.5, -1.25, 3.0, 1e-7]))),
        ("f64".into(), t(&[1], TensorData::Float64(vec![std::f64::consts::PI]))),
        (
            "f16".into(),
            t(&[2], TensorData::Float16(vec![f16::from_f32(0.5), f16::MIN_POSITIVE_SUBNORMAL])),
        ),
        ("bf16".into(), t(&[2], TensorData::Bfloat16(vec![bf16::from_f32(-3.0), bf16::MAX]))),
        ("s".into(), t(&[3], TensorData::String(vec!["a".into(), "".into(), "héllo".into()]))),
    ]
}

/// An infer request carrying `tensors`, binary or JSON, as a client builds it.
fn request(tensors: &[(String, Tensor)], binary: bool) -> (Vec<u8>, Option<String>) {
    let framed = frame(
        Map::new(),
        "inputs",
        tensors.iter().map(|(n, t)| (n, t, Out::binary(binary))).collect(),
    );
    (framed.body, framed.header_len.map(|n| n.to_string()))
}

#[test]
fn every_datatype_round_trips_as_json_and_binary() {
    for binary in [false, true] {
        let (body, h) = request(&every_dtype(), binary);
        assert_eq!(h.is_some(), binary);
        let r = decode(&body, h.as_deref(), &NoRegions).unwrap();
        assert_eq!(r.inputs, every_dtype(), "binary={binary}");
        let req = InferRequest {
            binary_output: binary,
            ..r
        };
        let e = encode_response("m", "v1", &req, &every_dtype(), &NoRegions).unwrap();
        let back = decode_response(&e.body, e.header_len.map(|n| n.to_string()).as_deref()).unwrap();
        assert_eq!(back, every_dtype(), "binary={binary}");
    }
}

#[test]
fn nested_json_data_is_flattened_and_checked_against_the_shape() {
    let body = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
    let r = decode(body, None, &NoRegions).unwrap();
    assert_eq!(r.inputs[0].1, t(&[2, 2], TensorData::Float32(vec![1.0, 2.0, 3.0, 4.5])));
    assert_eq!(r.header, body.to_vec());
    let wrong = br#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
    assert_eq!(
        decode(wrong, None, &NoRegions).unwrap_err().0,
        "input \"x\": shape [2, 3] needs 6 elements, got 4"
    );
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let cases: &[(&[u8], Option<&str>, &str)] = &[
        (b"{", None, "malformed inference request"),
        (br#"{"inputs":[]}"#, None, "no inputs"),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":["one"]}]}"#,
            None,
            "is not an FP16 number",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
            None,
            "unknown datatype",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            None,
            "negative dimension",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
            None,
            "is not an INT8",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
            None,
            "is not a boolean",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            None,
            "no data, no binary_data_size and no shared_memory_region",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            None,
            "given twice",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            Some("999"),
            "the body holds",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            Some("ten"),
            "byte count",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
            Some("91"),
            "only 0 bytes of binary data are left",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}12345678"#,
            Some("91"),
            "1 FP32 elements take 4",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}12345678"#,
            Some("91"),
            "4 bytes of binary data follow",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}AAAAB"#,
            Some("92"),
            "claims 1094795585 bytes",
        ),
        // Three empty elements for a shape of one: refused at the second,
        // not made first.
        (
            b"{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"BYTES\",\"parameters\":{\"binary_data_size\":12}}]}\0\0\0\0\0\0\0\0\0\0\0\0",
            Some("93"),
            "holds more than the 1 elements of its shape",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
            None,
            "too many elements",
        ),
        // Past the type's range: refused, not made infinite.
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e40]}]}"#,
            None,
            "(1e+40) is not an FP32 number",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[70000]}]}"#,
            None,
            "is not an FP16 number",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BF16","data":[1e39]}]}"#,
            None,
            "is not a BF16 number",
        ),
        (
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y"},{"name":"y"}]}"#,
            None,
            "output \"y\" is asked for twice",
        ),
    ];
    for (body, h, want) in cases {
        let e = decode(body, *h, &NoRegions).unwrap_err();
        assert!(e.0.contains(want), "{}: {e}", String::from_utf8_lossy(body));
    }
    // A BOOL byte is 0 or 1.
    let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}}]}"#;
    let len = head.len().to_string();
    let e = decode(&[&head[..], &[1, 7]].concat(), Some(&len), &NoRegions).unwrap_err();
    assert!(e.0.contains("BOOL element 1 is the byte 7, not 0 or 1"), "{e}");
    assert!(decode(&[&head[..], &[1, 0]].concat(), Some(&len), &NoRegions).is_ok());
}

#[test]
fn outputs_are_chosen_and_made_binary_as_asked() {
    let body = br#"{"id":"7","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],
        "outputs":[{"name":"f32","parameters":{"binary_data":true}},{"name":"s"}]}"#;
    let r = decode(body, None, &NoRegions).unwrap();
    let e = encode_response("iris", "blue", &r, &every_dtype(), &NoRegions).unwrap();
    let n = e.header_len.unwrap();
    let head: Value = serde_json::from_slice(&e.body[..n]).unwrap();
    assert_eq!(head["model_name"], "iris");
    assert_eq!(head["model_version"], "blue");
    assert_eq!(head["id"], "7");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 16);
    assert_eq!(head["outputs"][1]["data"], json!(["a", "", "héllo"]));
    assert_eq!(head["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(e.body.len(), n + 16);

    let missing = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"nope"}]}"#;
    let r = decode(missing, None, &NoRegions).unwrap();
    let e = encode_response("iris", "blue", &r, &every_dtype(), &NoRegions).unwrap_err();
    assert!(e.0.starts_with("there is no output \"nope\""), "{e}");
}

#[test]
fn pack_carries_a_body_and_tensors_and_refuses_a_bad_frame() {
    let (buf, h) = pack(b"{\"a\":1}", &every_dtype());
    let (body, tensors) = unpack(&buf, &h).unwrap();
    assert_eq!(body, b"{\"a\":1}");
    assert_eq!(tensors, every_dtype());
    let (buf, h) = pack(b"plain", &[]);
    assert_eq!(unpack(&buf, &h).unwrap(), (b"plain".to_vec(), vec![]));
    assert!(unpack(&buf, "99,1").is_err());
    assert!(unpack(&buf, "x").is_err());
}

#[test]
fn fuzz_entry_survives_hostile_bytes() {
    for s in [
        &b""[..],
        b"\x05{\"inp",
        b"\xff\xff",
        b"\x10{\"inputs\":[{\"name\":\"x\",\"shape\":[9999999999],\"datatype\":\"BYTES\",\"parameters\":{\"binary_data_size\":1}}]}",
    ] {
        fuzzing::infer_request(s);
    }
}

#[test]
fn half_floats_travel_as_json_numbers_and_as_two_bytes() {
    // JSON: rounded to the nearest 16-bit float; answered as float32 numbers.
    let body = br#"{"inputs":[{"name":"h","shape":[3],"datatype":"FP16","data":[1.0,-2.5,0.1]},{"name":"b","shape":[1,2],"datatype":"BF16","data":[[3.0,1e20]]}]}"#;
    let r = decode(body, None, &NoRegions).unwrap();
    let want_h: Vec<f16> = [1.0, -2.5, 0.1].iter().map(|x| f16::from_f64(*x)).collect();
    assert_eq!(r.inputs[0].1.data(), &TensorData::Float16(want_h.clone()));
    assert_eq!(
        r.inputs[1].1.data(),
        &TensorData::Bfloat16(vec![bf16::from_f32(3.0), bf16::from_f64(1e20)])
    );
    assert_eq!(
        to_json(r.inputs[0].1.data()),
        serde_json::json!([1.0, -2.5, f16::from_f64(0.1).to_f32()])
    );
    // Binary: two little-endian bytes per element, as tritonclient sends them.
    let bytes = to_bytes(&TensorData::Float16(want_h));
    assert_eq!(&bytes[..4], &[0x00, 0x3c, 0x00, 0xc1]);
    let header = br#"{"inputs":[{"name":"h","shape":[3],"datatype":"FP16","parameters":{"binary_data_size":6}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&bytes);
    let r = decode(&body, Some(&header.len().to_string()), &NoRegions).unwrap();
    assert_eq!(to_bytes(r.inputs[0].1.data()), bytes);
    // A binary section that is not two bytes per element is refused.
    let mut odd = br#"{"inputs":[{"name":"h","shape":[3],"datatype":"BF16","parameters":{"binary_data_size":5}}]}"#.to_vec();
    let n = odd.len();
    odd.extend_from_slice(&[0; 5]);
    assert!(decode(&odd, Some(&n.to_string()), &NoRegions)
        .unwrap_err()
        .0
        .contains("3 BF16 elements take 6"));
}

#[test]
fn bytes_that_are_not_utf8_travel_in_binary_and_are_refused_in_json() {
    // Binary: each element's bytes exactly (a PNG signature, a NUL, a cut
    // multi-byte character); text elements alone stay text.
    let elements = vec![b"\x89PNG\x00\xff".to_vec(), b"".to_vec(), vec![0xc3]];
    let odd = t(&[3], TensorData::from_byte_strings(elements.clone()));
    assert!(matches!(odd.data(), TensorData::Bytes(_)));
    assert_eq!(
        TensorData::from_byte_strings(vec![b"ok".to_vec()]),
        TensorData::String(vec!["ok".into()])
    );
    let (body, h) = request(&[("s".into(), odd.clone())], true);
    let r = decode(&body, h.as_deref(), &NoRegions).unwrap();
    assert_eq!(r.inputs[0].1, odd);
    assert_eq!(
        odd.data().byte_strings().unwrap(),
        elements.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    let outputs = [("s".to_string(), odd.clone())];
    let binary = InferRequest {
        binary_output: true,
        ..r.clone()
    };
    let e = encode_response("m", "v1", &binary, &outputs, &NoRegions).unwrap();
    let back = decode_response(&e.body, e.header_len.map(|n| n.to_string()).as_deref()).unwrap();
    assert_eq!(back, outputs);
    // JSON cannot carry them: a clear error that says how to ask instead.
    let json_out = InferRequest { binary_output: false, ..r };
    let e = encode_response("m", "v1", &json_out, &outputs, &NoRegions).unwrap_err();
    assert!(e.0.contains("not UTF-8") && e.0.contains("binary"), "{e}");
    // The hop between router and node carries them.
    let (buf, h) = pack(b"{}", &outputs);
    assert_eq!(unpack(&buf, &h).unwrap().1, outputs);
}

/// Shared memory for the tests: one region, "r", of 16 bytes.
struct Memory(std::cell::RefCell<Vec<u8>>);

impl Memory {
    fn place(&self, at: &InRegion, len: u64) -> Result<std::ops::Range<usize>, String> {
        if at.region != "r" {
            return Err(format!("no shared memory region {:?} is registered", at.region));
        }
        let end = at.offset + len;
        if end > 16 {
            return Err(format!("{end} is past the region's 16 bytes"));
        }
        Ok(at.offset as usize..end as usize)
    }
}

impl Regions for Memory {
    fn read(&self, at: &InRegion) -> Result<Vec<u8>, String> {
        Ok(self.0.borrow()[self.place(at, at.byte_size)?].to_vec())
    }
    fn write(&self, at: &InRegion, bytes: &[u8]) -> Result<(), String> {
        let range = self.place(at, bytes.len() as u64)?;
        self.0.borrow_mut()[range].copy_from_slice(bytes);
        Ok(())
    }
}

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn tensors_come_from_and_go_to_shared_memory() {
    let m = Memory(std::cell::RefCell::new(vec![0; 16]));
    m.0.borrow_mut()[4..12].copy_from_slice(&floats(&[1.5, -2.0]));
    let body = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"shared_memory_region":"r","shared_memory_byte_size":8,"shared_memory_offset":4}}],
        "outputs":[{"name":"x","parameters":{"shared_memory_region":"r","shared_memory_byte_size":12,"shared_memory_offset":8}}]}"#;
    let r = decode(body, None, &m).unwrap();
    assert_eq!(r.inputs, vec![("x".to_string(), t(&[2], TensorData::Float32(vec![1.5, -2.0])))]);
    let e = encode_response("m", "v1", &r, &r.inputs, &m).unwrap();
    assert_eq!(m.0.borrow()[8..16], floats(&[1.5, -2.0]));
    assert_eq!(e.header_len, None, "nothing binary follows the JSON");
    let v: Value = serde_json::from_slice(&e.body).unwrap();
    let out = &v["outputs"][0];
    assert_eq!(out["shape"], json!([2]));
    assert_eq!(out["datatype"], "FP32");
    assert!(out.get("data").is_none(), "{out}");
    assert_eq!(
        out["parameters"],
        json!({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 8})
    );
}

#[test]
fn shared_memory_mistakes_are_named() {
    let m = Memory(std::cell::RefCell::new(vec![0; 16]));
    let input = |params: &str| format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"FP32","parameters":{params}}}]}}"#);
    let cases = [
        (
            input(r#"{"shared_memory_region":"q","shared_memory_byte_size":8}"#),
            "no shared memory region \"q\"",
        ),
        (
            input(r#"{"shared_memory_region":"r","shared_memory_byte_size":4}"#),
            "2 FP32 elements take 8 bytes, but its shared_memory_byte_size is 4",
        ),
        // Checked before the region is read: 100 MB are not read first.
        (
            input(r#"{"shared_memory_region":"q","shared_memory_byte_size":100000000}"#),
            "2 FP32 elements take 8 bytes, but its shared_memory_byte_size is 100000000",
        ),
        (
            input(r#"{"shared_memory_region":"r","shared_memory_byte_size":8,"shared_memory_offset":12}"#),
            "past the region",
        ),
        (input(r#"{"shared_memory_region":"r"}"#), "needs shared_memory_byte_size"),
        (input(r#"{"shared_memory_byte_size":8}"#), "no shared_memory_region"),
        (
            input(r#"{"shared_memory_region":7,"shared_memory_byte_size":8}"#),
            "must be a region's name",
        ),
        (
            input(r#"{"shared_memory_region":"r","shared_memory_byte_size":-8}"#),
            "must be a byte count",
        ),
        (
            input(r#"{"shared_memory_region":"r","shared_memory_byte_size":8,"binary_data_size":8}"#),
            "also has data or binary_data_size",
        ),
    ];
    for (body, want) in cases {
        let e = decode(body.as_bytes(), None, &m).unwrap_err();
        assert!(e.0.contains(want), "{body}: {e}");
    }
    let small = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}],
        "outputs":[{"name":"x","parameters":{"shared_memory_region":"r","shared_memory_byte_size":4}}]}"#;
    let r = decode(small, None, &m).unwrap();
    let e = encode_response("m", "v1", &r, &r.inputs, &m).unwrap_err();
    assert!(e.0.contains("takes 8 bytes but its shared_memory_byte_size is 4"), "{e}");
    let fits = String::from_utf8_lossy(small).replace(":4}", ":8}");
    let r = decode(fits.as_bytes(), None, &m).unwrap();
    let e = encode_response("m", "v1", &r, &r.inputs, &NoRegions).unwrap_err();
    assert!(e.0.contains("no shared memory region \"r\""), "{e}");
}

#[test]
fn collected_tensors_keep_the_bodys_other_fields_and_write_their_data() {
    let tensors = vec![
        ("x".to_string(), t(&[2], TensorData::Float32(vec![5.1, 0.2]))),
        ("h".to_string(), t(&[1], TensorData::Float16(vec![f16::from_f32(1.5)]))),
        ("b".to_string(), t(&[1], TensorData::Bytes(vec![vec![0xff, 0]]))),
    ];
    let body = br#"{"id": "r1", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}], "outputs": [{"name": "y"}]}"#;
    let got: Value = serde_json::from_slice(&to_json_with_data("inputs", body, &tensors)).unwrap();
    assert_eq!(
        got,
        json!({"id": "r1", "outputs": [{"name": "y"}], "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "data": [5.1, 0.2]},
            {"name": "h", "datatype": "FP16", "shape": [1], "data": [1.5]},
            {"name": "b", "datatype": "BYTES", "shape": [1], "data": [[255, 0]]}]})
    );
    // A body that is not a JSON object (or none): the tensors alone.
    let alone: Value = serde_json::from_slice(&to_json_with_data("outputs", b"", &tensors[..1])).unwrap();
    assert_eq!(
        alone,
        json!({"outputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [5.1, 0.2]}]})
    );
}

#[test]
fn a_repeated_name_is_found_among_few_and_among_many() {
    let few = ["a", "b", "c", "b"];
    assert_eq!(repeated(&few, |s| s), Some("b"));
    assert_eq!(repeated(&few[..3], |s| s), None);
    let many: Vec<String> = (0..100).map(|i| format!("n{i}")).chain(["n42".to_string()]).collect();
    assert_eq!(repeated(&many, |s| s), Some("n42"));
    assert_eq!(repeated(&many[..100], |s| s), None);
}
