// A scripted SMSC for the SMPP carrier's tests (engine/tests/delivery_smpp.rs
// and engine/tests/delivery_chaos_smpp.rs), built on the `smpp` npm package (SMPP 3.4 / 5.0 server).
//
//   node smsc.js PORT SYSTEM_ID PASSWORD
//
// It listens on 127.0.0.1 only (PORT 0: a free port), prints one line per
// event on stdout and takes control lines on stdin, answering each with
// `OK <line>`. It is a test fixture: it must never listen beyond loopback,
// and it exits when its stdin closes (the test ended) or when killed.
//
// Events (stdout, one line each, space-separated key=value):
//   LISTENING port=N
//   BIND status=0xNN system_id=S        (0x00 accepted; else refused, closed)
//   SUBMIT id=ID status=0xNN from=S from_ton=N from_npi=N to=S to_ton=N
//          to_npi=N dc=N rd=N esm=N at=MS text=HEX   (printed when answered;
//          text: the decoded text, UTF-8 as hex; at: when the submit_sm
//          arrived, Unix ms; id is empty when refused or unanswered, and
//          status is `none` when unanswered, also when the session closed
//          before a delayed answer)
//   RECEIPT id=ID state=N               (a deliver_sm receipt was sent)
//   RECEIPT_RESP id=ID status=0xNN      (the client's deliver_sm_resp)
//   ENQUIRE_LINK                        (from the client; answered)
//   UNBIND
//   CLOSED
//
// Control lines (stdin):
//   throttle N        the next N submit_sm are answered ESME_RTHROTTLED (0x58)
//   qfull N           the next N are answered ESME_RMSGQFUL (0x14)
//   status N CODE     the next N are answered with CODE (e.g. 0x0B)
//   silent N          the next N get no answer at all
//   random_status RATE CODE
//                     each later submit_sm (after the counted modes above)
//                     is answered CODE with probability RATE (0 to 1; 0: off)
//   resp_delay MS     every submit_sm_resp is sent MS after its submit_sm
//                     arrived (default 0); a receipt follows the answer
//   receipts on|off   send delivery receipts (default on)
//   state N           message_state of later receipts (2 delivered, 5 undeliverable, ...)
//   style tlv|text    receipts carry the TLVs and the text (tlv, default) or
//                     the text only (text)
//   delay MS          receipts follow the submit_sm_resp after MS (default 20)
//   ids hex|dec       message ids in submit_sm_resp; receipt texts always
//                     quote the id in decimal when `dec_in_text` is on
//   dec_in_text on|off
//   close             closes every session (the server keeps listening)

'use strict';

const smpp = require('smpp');

const [portArg, systemId, password] = process.argv.slice(2);
if (portArg === undefined || systemId === undefined || password === undefined) {
  process.stderr.write('usage: node smsc.js PORT SYSTEM_ID PASSWORD\n');
  process.exit(2);
}

const modes = {
  throttle: 0,
  qfull: 0,
  status: 0,
  statusCode: 0,
  silent: 0,
  randomRate: 0,
  randomCode: 0,
  respDelay: 0,
  receipts: true,
  state: 2,
  style: 'tlv',
  delay: 20,
  ids: 'hex',
  decInText: false,
};
let nextId = 0x1a2b00;
const sessions = new Set();

function out(line) {
  process.stdout.write(line + '\n');
}

function hex(n) {
  return '0x' + n.toString(16).padStart(2, '0');
}

const STAT = {
  1: 'ENROUTE', 2: 'DELIVRD', 3: 'EXPIRED', 4: 'DELETED', 5: 'UNDELIV',
  6: 'ACCEPTD', 7: 'UNKNOWN', 8: 'REJECTD',
};

function smppDate(d) {
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
}

function sendReceipt(session, pdu, id, numericId) {
  const state = modes.state;
  const textId = modes.decInText ? String(numericId) : id;
  const now = smppDate(new Date());
  const text = `id:${textId} sub:001 dlvrd:${state === 2 ? '001' : '000'} submit date:${now} ` +
    `done date:${now} stat:${STAT[state] || 'UNKNOWN'} err:${state === 2 ? '000' : '001'} text:`;
  const fields = {
    source_addr_ton: pdu.dest_addr_ton,
    source_addr_npi: pdu.dest_addr_npi,
    source_addr: pdu.destination_addr,
    dest_addr_ton: pdu.source_addr_ton,
    dest_addr_npi: pdu.source_addr_npi,
    destination_addr: pdu.source_addr,
    esm_class: 0x04,
    data_coding: 0x00,
    short_message: Buffer.from(text, 'ascii'),
  };
  if (modes.style === 'tlv') {
    fields.receipted_message_id = id;
    fields.message_state = state;
  }
  session.deliver_sm(fields, (resp) => {
    out(`RECEIPT_RESP id=${id} status=${hex(resp.command_status)}`);
  });
  out(`RECEIPT id=${id} state=${state}`);
}

function onSubmit(session, pdu) {
  const msg = pdu.short_message && pdu.short_message.message !== undefined
    ? pdu.short_message.message
    : pdu.short_message;
  const text = Buffer.isBuffer(msg) ? msg.toString('hex') : Buffer.from(String(msg), 'utf8').toString('hex');
  const common = `from=${pdu.source_addr} from_ton=${pdu.source_addr_ton} from_npi=${pdu.source_addr_npi} ` +
    `to=${pdu.destination_addr} to_ton=${pdu.dest_addr_ton} to_npi=${pdu.dest_addr_npi} ` +
    `dc=${pdu.data_coding} rd=${pdu.registered_delivery} esm=${pdu.esm_class} ` +
    `at=${Date.now()} text=${text}`;
  let status = 0;
  if (modes.silent > 0) {
    modes.silent--;
    out(`SUBMIT id= status=none ${common}`);
    return;
  }
  if (modes.throttle > 0) {
    modes.throttle--;
    status = smpp.ESME_RTHROTTLED;
  } else if (modes.qfull > 0) {
    modes.qfull--;
    status = smpp.ESME_RMSGQFUL;
  } else if (modes.status > 0) {
    modes.status--;
    status = modes.statusCode;
  } else if (modes.randomRate > 0 && Math.random() < modes.randomRate) {
    status = modes.randomCode;
  }
  if (modes.respDelay > 0) {
    setTimeout(() => answer(session, pdu, status, common), modes.respDelay);
  } else {
    answer(session, pdu, status, common);
  }
}

function answer(session, pdu, status, common) {
  if (!sessions.has(session)) {
    out(`SUBMIT id= status=none ${common}`);
    return;
  }
  if (status !== 0) {
    session.send(pdu.response({ command_status: status }));
    out(`SUBMIT id= status=${hex(status)} ${common}`);
    return;
  }
  const numericId = nextId++;
  const id = modes.ids === 'hex' ? numericId.toString(16) : String(numericId);
  session.send(pdu.response({ message_id: id }));
  out(`SUBMIT id=${id} status=0x00 ${common}`);
  if (modes.receipts && (pdu.registered_delivery & 0x03) !== 0) {
    setTimeout(() => {
      if (sessions.has(session)) {
        sendReceipt(session, pdu, id, numericId);
      }
    }, modes.delay);
  }
}

const server = smpp.createServer((session) => {
  sessions.add(session);
  let bound = false;
  const onBind = (pdu) => {
    let status = 0;
    if (pdu.system_id !== systemId) {
      status = smpp.ESME_RINVSYSID;
    } else if (pdu.password !== password) {
      status = smpp.ESME_RINVPASWD;
    }
    out(`BIND status=${hex(status)} system_id=${pdu.system_id}`);
    if (status !== 0) {
      session.send(pdu.response({ command_status: status }));
      session.close();
      return;
    }
    bound = true;
    session.send(pdu.response({ system_id: 'smsc' }));
  };
  session.on('bind_transceiver', onBind);
  session.on('bind_transmitter', onBind);
  session.on('bind_receiver', onBind);
  session.on('submit_sm', (pdu) => {
    if (!bound) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    onSubmit(session, pdu);
  });
  session.on('enquire_link', (pdu) => {
    out('ENQUIRE_LINK');
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    out('UNBIND');
    session.send(pdu.response());
    session.close();
  });
  session.on('close', () => {
    sessions.delete(session);
    out('CLOSED');
  });
  session.on('error', () => {
    sessions.delete(session);
  });
});

server.on('error', (e) => {
  process.stderr.write(`smsc: ${e.message}\n`);
  process.exit(1);
});

server.listen(Number(portArg), '127.0.0.1', () => {
  out(`LISTENING port=${server.address().port}`);
});

let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (line) {
      control(line);
    }
  }
});
// The test is gone: so is the SMSC.
process.stdin.on('end', () => process.exit(0));

function control(line) {
  const [cmd, a, b] = line.split(/\s+/);
  switch (cmd) {
    case 'throttle': modes.throttle = Number(a); break;
    case 'qfull': modes.qfull = Number(a); break;
    case 'status': modes.status = Number(a); modes.statusCode = Number(b); break;
    case 'silent': modes.silent = Number(a); break;
    case 'random_status': modes.randomRate = Number(a); modes.randomCode = Number(b); break;
    case 'resp_delay': modes.respDelay = Number(a); break;
    case 'receipts': modes.receipts = a === 'on'; break;
    case 'state': modes.state = Number(a); break;
    case 'style': modes.style = a; break;
    case 'delay': modes.delay = Number(a); break;
    case 'ids': modes.ids = a; break;
    case 'dec_in_text': modes.decInText = a === 'on'; break;
    case 'close':
      for (const s of sessions) {
        s.destroy();
      }
      break;
    default:
      out(`ERROR unknown control ${line}`);
      return;
  }
  out(`OK ${line}`);
}
