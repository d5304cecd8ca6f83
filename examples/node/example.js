#!/usr/bin/env node
'use strict';
// gradwire from Node: create a model, train it with inline data (Train, streaming progress),
// upload datasets (UploadDataset, client streaming) and train on them again (StartRun +
// WatchRun), predict, then provoke an INVALID_ARGUMENT and read its google.rpc.BadRequest.
//
//   node example.js [ADDRESS [TOKEN]]      (else GRADWIRE_SERVER, GRADWIRE_TOKEN)
//
// Prints each step; the last line is `summary: {json}`. Exits 1 on anything unexpected.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const { loadTrainer, loadRichStatus } = require('./protos');
const { rowsToTensor, tensorToRows } = require('./tensor');
const { richStatus, TRAILER } = require('./rich-status');

const ADDRESS = process.argv[2] || process.env.GRADWIRE_SERVER || '127.0.0.1:50051';
const TOKEN = process.argv[3] || process.env.GRADWIRE_TOKEN || '';
const DEADLINE_MS = 30_000; // unary calls; the training streams get a longer one
const TRAIN_DEADLINE_MS = 120_000;

const X = [[0, 0], [0, 1], [1, 0], [1, 1]];
const Y = [[0], [1], [1], [0]]; // XOR
const SPEC = {
  input_dim: 2,
  layers: [
    { dense: { units: 8, activation: 'tanh', init: 'xavier_uniform' } },
    { dense: { units: 1, activation: 'sigmoid', init: 'xavier_uniform' } },
  ],
  loss: 'binary_crossentropy',
  dtype: 'FLOAT32',
  seed: 1,
};
const OPTIONS = { epochs: 300, batch_size: 4, seed: 7, optimizer: { name: 'adam', learning_rate: 0.05 } };

// `authorization: Bearer <token>` on every call, streams included. (grpc-js refuses call
// credentials on an insecure channel, so a plaintext channel adds the header itself.)
function bearer(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

const deadline = (ms = DEADLINE_MS) => ({ deadline: Date.now() + ms });

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, deadline(), (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

function describeEpoch(p) {
  const val = p.val_loss === undefined || p.val_loss === null ? '' : ` val_loss ${p.val_loss.toFixed(4)}`;
  const metric = `${p.metric_name} ${p.train_metric.toFixed(2)}`;
  return `epoch ${p.epoch}/${p.epochs_planned} loss ${p.train_loss.toFixed(4)}${val} ${metric}`;
}

const shouldPrint = (p) => p.epoch === 1 || p.epoch % 100 === 0 || p.epoch === p.epochs_planned;

async function createModel(client) {
  const model = await unary(client, 'CreateModel', { name: 'node-xor', spec: SPEC });
  console.log(
    `create: model ${model.model_id}, ${model.parameter_count} parameters, ` +
      `version ${model.version}, classifier ${model.classifier}`,
  );
  return model;
}

// Train: StartRun with inline tensors, then its progress as a server stream.
async function trainInline(client, modelId) {
  const call = client.Train(
    { model_id: modelId, inputs: rowsToTensor(X), targets: rowsToTensor(Y), options: OPTIONS },
    deadline(TRAIN_DEADLINE_MS),
  );
  call.on('metadata', (metadata) => console.log(`train: run ${metadata.get('gradwire-run-id')[0]} started`));
  let epochs = 0;
  let result = null;
  for await (const event of call) {
    if (event.event === 'progress') {
      epochs += 1;
      if (shouldPrint(event.progress)) console.log(`train: ${describeEpoch(event.progress)}`);
    } else {
      result = event.result;
    }
  }
  if (!result) throw new Error('Train ended without a result');
  console.log(
    `train: ${result.stop_reason} after ${result.epochs_run} epochs, best loss ` +
      `${result.best_loss.toFixed(4)} (epoch ${result.best_epoch}), model version ${result.version}`,
  );
  return { ...result, progress_events: epochs };
}

// The dataset id the server will give this array: its content address (see Dataset in the proto).
function datasetId(tensor) {
  const dtype = tensor.dtype.toLowerCase(); // "float32" | "float64"
  const checksum = crypto.createHash('sha256').update(tensor.data).digest('hex');
  const text = `gradwire.dataset/1\n${dtype}\n${tensor.shape[0]}x${tensor.shape[1]}\n${checksum}\n`;
  return crypto.createHash('sha256').update(text).digest('hex');
}

// UploadDataset: a header, then the bytes in chunks (1 MiB is the usual size; any size works).
function upload(client, name, tensor, chunkBytes = 1 << 20) {
  return new Promise((resolve, reject) => {
    const call = client.UploadDataset(deadline(), (error, dataset) =>
      error ? reject(error) : resolve(dataset),
    );
    call.write({ header: { name, dtype: tensor.dtype, shape: tensor.shape } });
    for (let offset = 0; offset < tensor.data.length; offset += chunkBytes) {
      call.write({ chunk: tensor.data.subarray(offset, offset + chunkBytes) });
    }
    call.end();
  });
}

async function uploadDatasets(client) {
  const ids = {};
  for (const [role, rows] of [['inputs', X], ['targets', Y]]) {
    const tensor = rowsToTensor(rows);
    const dataset = await upload(client, `xor-${role}`, tensor, 8); // small chunks, to show several
    const expected = datasetId(tensor);
    if (dataset.dataset_id !== expected) {
      throw new Error(`dataset id ${dataset.dataset_id} is not the content address ${expected}`);
    }
    console.log(
      `upload: ${role} dataset ${dataset.dataset_id.slice(0, 12)}… [${dataset.shape}] ` +
        `${dataset.dtype}, ${dataset.nbytes} bytes (id = content address)`,
    );
    ids[role] = dataset.dataset_id;
  }
  return ids;
}

// StartRun returns at once; WatchRun streams the committed epochs, then the run as it ends.
async function trainOnDatasets(client, modelId, ids) {
  const run = await unary(client, 'StartRun', {
    model_id: modelId,
    inputs: { dataset_id: ids.inputs },
    targets: { dataset_id: ids.targets },
    options: { ...OPTIONS, epochs: 100 },
  });
  console.log(`start-run: run ${run.run_id} ${run.status}, base version ${run.base_version}`);
  const watch = client.WatchRun({ run_id: run.run_id, after_epoch: 0 }, deadline(TRAIN_DEADLINE_MS));
  let ended = null;
  for await (const event of watch) {
    if (event.event === 'progress') {
      if (shouldPrint(event.progress)) console.log(`watch: ${describeEpoch(event.progress)}`);
    } else {
      ended = event.result;
    }
  }
  if (!ended || ended.status !== 'completed') {
    const how = ended ? `${ended.status}: ${ended.error}` : 'without a result';
    throw new Error(`run ${run.run_id} ended ${how}`);
  }
  console.log(
    `watch: run ${ended.status} (${ended.stop_reason}), ${ended.epochs_done} epochs, ` +
      `model version ${ended.version}`,
  );
  return ended;
}

async function predict(client, modelId) {
  const reply = await unary(client, 'Predict', { model_id: modelId, inputs: rowsToTensor(X, 'FLOAT64') });
  const outputs = tensorToRows(reply.outputs);
  const labels = tensorToRows(reply.labels);
  const show = (rows, digits) => rows.map((r) => r.map((v) => v.toFixed(digits)).join(' ')).join(', ');
  const { outputs: out, labels: lab } = reply;
  console.log(`predict: version ${reply.version}, outputs [${out.shape}] ${out.dtype}: ${show(outputs, 3)}`);
  console.log(`predict: labels [${lab.shape}] ${lab.dtype}: ${show(labels, 0)}`);
  return {
    version: reply.version,
    shape: reply.outputs.shape.map(Number),
    dtype: reply.outputs.dtype,
    outputs,
    labels,
  };
}

// Ask for an impossible model: the server reports every bad field at once, in a BadRequest.
async function provokeInvalidArgument(client, root) {
  const spec = { ...SPEC, layers: [{ dense: { units: -3 } }, SPEC.layers[1]], loss: 'hinge' };
  try {
    await unary(client, 'CreateModel', { name: 'impossible', spec });
  } catch (error) {
    if (error.code !== grpc.status.INVALID_ARGUMENT) throw error;
    const status = richStatus(error, root);
    if (!status) throw new Error(`INVALID_ARGUMENT without ${TRAILER}: ${error.message}`);
    console.log(`error: ${status.codeName}: ${status.message}`);
    const violations = [];
    for (const detail of status.details) {
      if (detail.type !== 'google.rpc.BadRequest') {
        console.log(`error: detail ${detail.type}`);
        continue;
      }
      for (const v of detail.field_violations) {
        console.log(`error: BadRequest field ${v.field}: ${v.description}`);
        violations.push({ field: v.field, description: v.description });
      }
    }
    if (!violations.length) throw new Error('INVALID_ARGUMENT without BadRequest field violations');
    return { code: status.codeName, message: status.message, violations };
  }
  throw new Error('an impossible spec was accepted');
}

async function main() {
  const Trainer = loadTrainer();
  const { root, dir } = loadRichStatus();
  console.log(`gradwire at ${ADDRESS}, ${TOKEN ? 'with' : 'without'} a token; google/rpc protos from ${dir}`);
  const client = new Trainer(ADDRESS, grpc.credentials.createInsecure(), {
    interceptors: TOKEN ? [bearer(TOKEN)] : [],
  });
  try {
    await new Promise((resolve, reject) =>
      client.waitForReady(Date.now() + 10_000, (error) => (error ? reject(error) : resolve())),
    );
    const model = await createModel(client);
    const trained = await trainInline(client, model.model_id);
    const ids = await uploadDatasets(client);
    const run = await trainOnDatasets(client, model.model_id, ids);
    const prediction = await predict(client, model.model_id);
    const error = await provokeInvalidArgument(client, root);
    const summary = {
      model_id: model.model_id,
      train: {
        stop_reason: trained.stop_reason,
        epochs_run: trained.epochs_run,
        version: trained.version,
        progress_events: trained.progress_events,
        best_loss: trained.best_loss,
      },
      run: { run_id: run.run_id, status: run.status, epochs_done: run.epochs_done, version: run.version },
      predict: prediction,
      error,
    };
    console.log(`summary: ${JSON.stringify(summary)}`);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  const code = error.code === undefined ? '' : ` (${grpc.status[error.code] || error.code})`;
  console.error(`failed${code}: ${error.message || error}`);
  process.exit(1);
});
