'use strict';
// The rich error details of a failed call: the `grpc-status-details-bin` trailer holds a
// serialized google.rpc.Status (code, message, details); each detail is a google.protobuf.Any
// whose type_url names its type ("type.googleapis.com/google.rpc.BadRequest").

const grpc = require('@grpc/grpc-js');

const TRAILER = 'grpc-status-details-bin';

// { code, message, details: [{ type, ...fields }] } for a grpc-js error, or null without the
// trailer. grpc-js puts the trailers on the error as `error.metadata`; a `-bin` key's values are
// Buffers (base64 on the wire, decoded by grpc-js).
function richStatus(error, root) {
  const [raw] = error.metadata ? error.metadata.get(TRAILER) : [];
  if (!raw) return null;
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(raw);
  const details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    let type;
    try {
      type = root.lookupType(typeName);
    } catch {
      return { type: typeName, undecoded: Buffer.from(any.value).toString('base64') };
    }
    return { type: typeName, ...type.toObject(type.decode(any.value), { defaults: true, arrays: true }) };
  });
  return { code: status.code, codeName: grpc.status[status.code], message: status.message, details };
}

module.exports = { richStatus, TRAILER };
