'use strict';
// Node.js client for the nodesvc node service (nodesvc.v1). The API is loaded at run time
// from the repo's proto/ (no generated code to keep in sync), with the proto's field names
// (keepCase), enums as names and 64-bit integers as strings, as in proto JSON.

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.NODESVC_PROTO_ROOT || path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = 'nodesvc/v1/nodesvc.proto';
const PACKAGE = 'nodesvc.v1';
const DEFAULT_SOCKET = '/var/lib/nodesvc/nodesvc.sock';
const LOADER_OPTIONS = {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let loaded;
function load() {
  if (!loaded) {
    const def = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    loaded = { def, pkg: grpc.loadPackageDefinition(def).nodesvc.v1 };
  }
  return loaded;
}

// A failed call: the gRPC status code (number and name) and the server's message.
class NodeError extends Error {
  constructor(code, message) {
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === code) || 'UNKNOWN';
    super(`${codeName}: ${message}`);
    this.code = code;
    this.codeName = codeName;
    this.details = message;
  }
}

// 'unix:///abs', a socket path, or 'host:port' -> a grpc-js target.
function normalizeTarget(target) {
  target = target || process.env.NODESVC_TARGET
    || `unix://${process.env.NODESVC_SOCKET || DEFAULT_SOCKET}`;
  if (target.startsWith('unix:')) return target;
  if (target.includes('/')) return `unix://${path.resolve(target)}`;
  return target;
}

// Unknown keys are errors naming the path (protobufjs would drop them silently).
function checkKeys(def, typeName, obj, where) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new NodeError(grpc.status.INVALID_ARGUMENT, `${where}: must be an object`);
  }
  const type = def[typeName].type;
  const fields = new Map(type.field.map((f) => [f.name, f]));
  for (const [key, value] of Object.entries(obj)) {
    const f = fields.get(key);
    if (!f) {
      throw new NodeError(grpc.status.INVALID_ARGUMENT,
        `${where}.${key}: unknown key; known keys: ${[...fields.keys()].join(', ')}`);
    }
    if (f.type !== 'TYPE_MESSAGE' || value === null || value === undefined) continue;
    const isMap = type.nestedType.some((n) => n.name === f.typeName && n.options?.mapEntry);
    const sub = [`${PACKAGE}.${f.typeName}`, f.typeName].find((n) => def[n] && def[n].type);
    if (isMap || !sub) continue;
    if (f.label === 'LABEL_REPEATED') {
      if (!Array.isArray(value)) {
        throw new NodeError(grpc.status.INVALID_ARGUMENT, `${where}.${key}: must be a list`);
      }
      value.forEach((item, i) => checkKeys(def, sub, item, `${where}.${key}[${i}]`));
    } else {
      checkKeys(def, sub, value, `${where}.${key}`);
    }
  }
}

// A create document: a CreateVmRequest (vm_id, labels, spec, start) or a bare VmSpec.
function createRequestFromObject(doc) {
  const { def } = load();
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new NodeError(grpc.status.INVALID_ARGUMENT, 'spec file: must be a JSON object');
  }
  if (['vm_id', 'spec', 'labels', 'start'].some((k) => k in doc)) {
    checkKeys(def, `${PACKAGE}.CreateVmRequest`, doc, 'request');
    return { ...doc };
  }
  checkKeys(def, `${PACKAGE}.VmSpec`, doc, 'spec');
  return { spec: doc };
}

function createRequestFromFile(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new NodeError(grpc.status.INVALID_ARGUMENT, `cannot read ${file}: ${e.message}`);
  }
  try {
    return createRequestFromObject(JSON.parse(text));
  } catch (e) {
    if (e instanceof NodeError) throw e;
    throw new NodeError(grpc.status.INVALID_ARGUMENT, `${file}: invalid JSON: ${e.message}`);
  }
}

class NodeClient {
  // target: see normalizeTarget; credentials: grpc.credentials.createSsl(...) for mTLS.
  constructor(target, { credentials, timeoutMs = 60000 } = {}) {
    const { pkg } = load();
    this.target = normalizeTarget(target);
    this.timeoutMs = timeoutMs;
    this.stub = new pkg.NodeService(this.target,
      credentials || grpc.credentials.createInsecure());
  }

  // Any unary RPC by name, as a promise; failures reject with NodeError.
  call(method, request = {}) {
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, { deadline }, (err, resp) => {
        if (err) reject(new NodeError(err.code, err.details || err.message));
        else resolve(resp);
      });
    });
  }

  // -> { vms: [Vm], revision } ; labels: {k: v}, states: ['VM_STATE_RUNNING', ...]
  listVms({ labels = {}, states = [] } = {}) {
    return this.call('ListVms', { label_selector: labels, states });
  }

  // request: a CreateVmRequest object (vm_id, spec, labels, start) -> Vm
  async createVm(request) {
    return (await this.call('CreateVm', request)).vm;
  }

  async getVm(vmId) {
    return (await this.call('GetVm', { vm_id: vmId })).vm;
  }

  close() {
    this.stub.close();
  }
}

module.exports = {
  NodeClient, NodeError, normalizeTarget, createRequestFromObject, createRequestFromFile, load,
};
