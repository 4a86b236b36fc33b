// Runs graphql-http's server audits (GraphQL-over-HTTP spec) against the URL in argv[2]; prints
// one JSON line: the counts per level and the failures, for tests/test_clients_node.py.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
const results = [];
for (const audit of serverAudits({ url })) {
  const result = await audit.fn();
  results.push({ id: audit.id, name: audit.name, ...result });
}
const levels = {};
for (const level of ['MUST', 'SHOULD', 'MAY']) {
  const of = results.filter((r) => r.name.startsWith(level));
  levels[level] = { ok: of.filter((r) => r.status === 'ok').length, total: of.length };
}
const failures = results
  .filter((r) => r.status !== 'ok')
  .map((r) => ({ id: r.id, name: r.name, status: r.status, reason: r.reason }));
console.log(JSON.stringify({ levels, failures }));
