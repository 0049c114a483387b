// The seed's Socket.IO client snippet (shared/seed/mageagent-architecture.md, "WebSocket",
// client side), run as written; the only addition is the key in io()'s options.
//   node seed_socketio.js URL KEY TASK_ID [auth|query|websocket]
// Prints one JSON line: {"text", "updates"} once `done` arrived, or what went wrong.
const { io } = require('socket.io-client');

const [url, key, taskId, how = 'auth'] = process.argv.slice(2);
const options = {
  auth: { auth: { token: key } },
  query: { query: { token: key } },
  websocket: { auth: { token: key }, transports: ['websocket'] },
}[how];
const updates = [];
let text = '';
function appendText(content) { text += content; }
function report(outcome) {
  console.log(JSON.stringify(outcome));
  socket.close();
}

const socket = io(url, options);

socket.emit('subscribe-task', { taskId });

socket.on('task-update', (data) => {
    if (data.type === 'chunk') {
        appendText(data.content);
    }
    updates.push(data);
    if (data.type === 'done') report({ text, updates });
});

socket.on('error', (error) => report({ error, updates }));
socket.on('connect_error', (err) => report({ connect_error: err.message, data: err.data }));
setTimeout(() => report({ timeout: true, updates }), 60000).unref();
