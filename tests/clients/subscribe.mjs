// The npm graphql-ws client (what Apollo Client, urql and Relay use) against CheckMate, driven by
// tests/test_clients_node.py: runs a query over the socket (the server completes it), then
// subscribes to one task's changes to QUEUED or RUNNING, prints each event as a JSON line, and
// completes the subscription itself after `count` events.
//   node subscribe.mjs ws://127.0.0.1:PORT/graphql TASK_ID COUNT
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, taskId, count] = process.argv.slice(2);
const print = (line) => console.log(JSON.stringify(line));

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  retryAttempts: 0,
  lazy: false, // one socket for the query and the subscription
  on: { connected: () => print({ connected: true }) },
});

try {
  for await (const result of client.iterate({ query: '{ taskCounts { status count } }' })) {
    print({ query: result });
  }
  print({ queryCompleted: true });

  const feed = client.iterate({
    query: `subscription($filter: TaskFilter) {
      taskStatusChanged(filter: $filter) { eventId taskId status previousStatus }
    }`,
    variables: { filter: { ids: [taskId], statuses: ["QUEUED", "RUNNING"] } },
  });
  print({ subscribed: true });
  let received = 0;
  for await (const result of feed) {
    print({ event: result });
    if (++received === Number(count)) break; // sends `complete` to the server
  }
  await client.dispose();
  print({ done: true });
} catch (error) {
  // An Error, a CloseEvent (code, reason) or the GraphQL errors of an `error` message.
  const reason = error instanceof Error ? error.message
    : error && typeof error === 'object' && 'code' in error ? { code: error.code, reason: error.reason }
    : error;
  print({ error: reason });
  process.exit(1);
}
