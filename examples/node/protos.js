'use strict';
// Where the .proto files come from, and loading them.
//
// gradwire.proto: this repository's proto/ folder (GRADWIRE_PROTO_DIR to use another copy).
// google/rpc/status.proto and google/rpc/error_details.proto (the rich error details): the
// copies googleapis-common-protos ships, the Python package the server itself packs its errors
// with, so both sides read the same definitions and nothing extra is downloaded. They are found
// in GOOGLEAPIS_PROTO_DIR (any folder holding google/rpc/status.proto, for instance
// node_modules/google-proto-files after `npm install google-proto-files`), else by asking Python
// where the package is. google/protobuf/*.proto (timestamp, any, duration) come with protobufjs.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO = path.resolve(__dirname, '..', '..');
const GRADWIRE_PROTO_DIR = process.env.GRADWIRE_PROTO_DIR || path.join(REPO, 'proto');

// proto-loader's options: field names as written in the .proto (snake_case), enums by name,
// int64 as decimal strings (a JS number is exact only up to 2^53), unset fields with their
// defaults, and the name of the member set in each oneof (`event.event === 'progress'`).
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadTrainer() {
  const definition = protoLoader.loadSync('gradwire/v1/gradwire.proto', {
    ...LOADER_OPTIONS,
    includeDirs: [GRADWIRE_PROTO_DIR],
  });
  return grpc.loadPackageDefinition(definition).gradwire.v1.Trainer;
}

// The folder that holds google/rpc/status.proto: GOOGLEAPIS_PROTO_DIR, else the parent of the
// `google` package of googleapis-common-protos, asked of this repository's .venv, then python3.
// (google.rpc is a namespace package: it has __path__, no __file__.)
function googleapisDir() {
  const found = (dir) => dir && fs.existsSync(path.join(dir, 'google', 'rpc', 'status.proto'));
  const fromEnv = process.env.GOOGLEAPIS_PROTO_DIR;
  if (fromEnv) {
    if (!found(fromEnv)) throw new Error(`GOOGLEAPIS_PROTO_DIR=${fromEnv} holds no google/rpc/status.proto`);
    return fromEnv;
  }
  const pythons = [path.join(REPO, '.venv', 'bin', 'python'), 'python3'];
  for (const python of pythons) {
    try {
      const rpc = execFileSync(python, ['-c', 'import google.rpc; print(list(google.rpc.__path__)[0])'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
      const dir = path.dirname(path.dirname(rpc));
      if (found(dir)) return dir;
    } catch {
      // no such interpreter, or no googleapis-common-protos in it: try the next one
    }
  }
  throw new Error(
    'google/rpc/status.proto not found: pip install googleapis-common-protos, or set ' +
      'GOOGLEAPIS_PROTO_DIR to a folder that holds google/rpc/status.proto',
  );
}

// A protobufjs root with google.rpc.Status and the error details types, to decode the
// `grpc-status-details-bin` trailer (proto-loader builds gRPC methods, not message codecs).
function loadRichStatus() {
  const dir = googleapisDir();
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    if (path.isAbsolute(target)) return target;
    const candidate = path.join(dir, target);
    // google/protobuf/*.proto are not in the folder: protobufjs has them built in, by name.
    return fs.existsSync(candidate) ? candidate : target;
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return { root, dir };
}

module.exports = { loadTrainer, loadRichStatus, GRADWIRE_PROTO_DIR };
