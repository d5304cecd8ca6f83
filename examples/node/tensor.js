'use strict';
// gradwire.v1.Tensor <-> plain JavaScript rows.
//
// A tensor is (shape, dtype, data): `data` holds product(shape) elements, row-major (the last
// index varies fastest), each little-endian. The bytes carry no padding and no alignment: a
// decoded `data` Buffer is usually a slice of the whole message at an arbitrary byteOffset, so
// `new Float32Array(data.buffer, data.byteOffset, n)` can throw ("start offset of Float32Array
// should be a multiple of 4") and would read in the machine's byte order anyway. Buffer's
// read*LE / write*LE methods take any offset and name the byte order, so they are used here.

const DTYPES = {
  FLOAT32: {
    size: 4,
    read: (buffer, offset) => buffer.readFloatLE(offset),
    write: (buffer, value, offset) => buffer.writeFloatLE(value, offset),
  },
  FLOAT64: {
    size: 8,
    read: (buffer, offset) => buffer.readDoubleLE(offset),
    write: (buffer, value, offset) => buffer.writeDoubleLE(value, offset),
  },
  // Class labels in responses only. Numbers: labels are small; BigInt would keep all 64 bits.
  INT64: {
    size: 8,
    read: (buffer, offset) => Number(buffer.readBigInt64LE(offset)),
    write: (buffer, value, offset) => buffer.writeBigInt64LE(BigInt(value), offset),
  },
};

function dtypeOf(name) {
  const dtype = DTYPES[name];
  if (!dtype) {
    throw new Error(`dtype ${name} has no encoding here; use one of ${Object.keys(DTYPES).join(', ')}`);
  }
  return dtype;
}

// An array of equal-length rows as a Tensor message (shape [rows, columns]).
function rowsToTensor(rows, dtypeName = 'FLOAT32') {
  const dtype = dtypeOf(dtypeName);
  const columns = rows.length ? rows[0].length : 0;
  const data = Buffer.alloc(rows.length * columns * dtype.size);
  rows.forEach((row, i) => {
    if (row.length !== columns) {
      throw new Error(`row ${i} has ${row.length} values, row 0 has ${columns}`);
    }
    row.forEach((value, j) => dtype.write(data, value, (i * columns + j) * dtype.size));
  });
  // int64 shape: numbers are fine going out; proto-loader's `longs` option decides what comes back.
  return { shape: [rows.length, columns], dtype: dtypeName, data };
}

// A Tensor message (shape as strings or numbers, dtype as its enum name) as nested arrays:
// rows of values for 2-D tensors, values for 1-D ones.
function tensorToRows(tensor) {
  const dtype = dtypeOf(tensor.dtype);
  const shape = tensor.shape.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  if (tensor.data.length !== count * dtype.size) {
    const [needs, has] = [count * dtype.size, tensor.data.length];
    throw new Error(`tensor of shape [${shape}] ${tensor.dtype} needs ${needs} bytes, has ${has}`);
  }
  const values = Array.from({ length: count }, (_, i) => dtype.read(tensor.data, i * dtype.size));
  if (shape.length === 1) return values;
  if (shape.length !== 2) throw new Error(`only 1-D and 2-D tensors are decoded here, got [${shape}]`);
  const [rows, columns] = shape;
  return Array.from({ length: rows }, (_, i) => values.slice(i * columns, (i + 1) * columns));
}

module.exports = { DTYPES, rowsToTensor, tensorToRows };
