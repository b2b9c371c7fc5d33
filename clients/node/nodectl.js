#!/usr/bin/env node
'use strict';
// nodectl.js: list and create microVMs from Node.js, printing JSON.
//
//   node nodectl.js --socket /var/lib/nodesvc/nodesvc.sock list [--label k=v] [--state running]
//   node nodectl.js --socket S create -f vm.json [--id ID] [--label k=v] [--start]
//   node nodectl.js --target unix:///path get ID
//
// vm.json: a CreateVmRequest ({"vm_id", "labels", "spec", "start"}) or a bare VmSpec, with
// the proto's field names (the same documents `nodectl create -f` reads).
// Exit status: 0 ok; 1 error, printed as `nodectl.js: <CODE>: <message>`; 2 bad usage.

const { NodeClient, NodeError, createRequestFromFile } = require('./client');

const USAGE = 'usage: nodectl.js [--socket PATH | --target TARGET] '
  + '(list [--label K=V]... [--state S]... | create -f FILE [--id ID] [--label K=V]... [--start]'
  + ' | get ID)';

class UsageError extends Error {}

function parseArgs(argv) {
  const opts = { labels: {}, states: [], rest: [] };
  const value = (i, flag) => {
    if (i >= argv.length) throw new UsageError(`${flag} needs a value`);
    return argv[i];
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--socket') opts.target = `unix://${require('path').resolve(value(++i, a))}`;
    else if (a === '--target') opts.target = value(++i, a);
    else if (a === '-f' || a === '--file') opts.file = value(++i, a);
    else if (a === '--id') opts.id = value(++i, a);
    else if (a === '--start') opts.start = true;
    else if (a === '-l' || a === '--label') {
      const [k, ...v] = value(++i, a).split('=');
      if (!k || v.length === 0) throw new UsageError(`--label: want KEY=VALUE, got ${argv[i]}`);
      opts.labels[k] = v.join('=');
    } else if (a === '--state') {
      const s = value(++i, a).toUpperCase();
      opts.states.push(s.startsWith('VM_STATE_') ? s : `VM_STATE_${s}`);
    } else if (a === '-h' || a === '--help') throw new UsageError('');
    else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else opts.rest.push(a);
  }
  return opts;
}

async function run(opts) {
  const [command, ...args] = opts.rest;
  const client = new NodeClient(opts.target);
  try {
    if (command === 'list') {
      return await client.listVms({ labels: opts.labels, states: opts.states });
    }
    if (command === 'create') {
      if (!opts.file) throw new UsageError('create needs -f FILE');
      const req = createRequestFromFile(opts.file);
      if (opts.id) req.vm_id = opts.id;
      if (!req.vm_id) {
        throw new NodeError(3, 'no VM id: give --id ID or vm_id in the spec file');
      }
      req.labels = { ...(req.labels || {}), ...opts.labels };
      if (opts.start) req.start = true;
      return await client.createVm(req);
    }
    if (command === 'get' && args.length === 1) return await client.getVm(args[0]);
    throw new UsageError(command ? `unknown command or arguments: ${opts.rest.join(' ')}`
      : 'a command is needed');
  } finally {
    client.close();
  }
}

// google.protobuf.Timestamp values print as RFC 3339 strings, as in proto JSON.
function timestamps(key, v) {
  if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 2
      && 'seconds' in v && 'nanos' in v) {
    return new Date(Number(v.seconds) * 1000 + Math.floor(v.nanos / 1e6)).toISOString();
  }
  return v;
}

async function main(argv) {
  let opts;
  try {
    opts = parseArgs(argv);
    const result = await run(opts);
    process.stdout.write(`${JSON.stringify(result, timestamps, 2)}\n`);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message ? `nodectl.js: ${e.message}\n` : ''}${USAGE}\n`);
      return 2;
    }
    if (e instanceof NodeError) {
      process.stderr.write(`nodectl.js: ${e.codeName}: ${e.details}\n`);
      return 1;
    }
    throw e;
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
