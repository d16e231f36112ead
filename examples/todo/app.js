// The outpost todo demo: an offline-first list on the JavaScript client.
// Serve the repository root with any static server and open
// /examples/todo/?relay=ws://HOST:7070/ws (default: this host, port 7070).
import { connect } from '../../clients/js/dist/outpost.min.mjs';

const params = new URLSearchParams(location.search);
const relay = params.get('relay') || `ws://${location.hostname || '127.0.0.1'}:7070/ws`;
const listName = params.get('list') || 'todo';
const client = connect(relay, { spaces: [listName], name: 'outpost-todo:' + relay });
const space = client.space(listName);
const $ = (id) => document.getElementById(id);

const newId = () => Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 8);
// Creation time orders the list; strictly increasing so quick adds keep their order.
let lastAt = 0;
const add = (title) => space.put('items', newId(), { title, done: false, at: (lastAt = Math.max(Date.now(), lastAt + 1)) });
const toggle = (id, done) => space.patch('items', id, { done });
const rename = (id, title) => space.patch('items', id, { title });
const remove = (id) => space.delete('items', id);

// For the browser tests: every relay change this tab folded in.
const changes = [];
space.on('change', (f) => changes.push({ id: f.id, seq: f.seq, origin: f.origin, origin_seq: f.origin_seq }));
window.todo = { client, space, add, toggle, rename, remove, changes };

$('add').addEventListener('submit', (e) => {
  e.preventDefault();
  const title = $('title').value.trim();
  if (title) add(title);
  $('title').value = '';
});

let editing = null;
function render(items) {
  const ul = $('list');
  ul.replaceChildren(
    ...items
      .sort((a, b) => (a.data.at || 0) - (b.data.at || 0) || (a.id < b.id ? -1 : 1))
      .map((d) => {
        const li = document.createElement('li');
        li.dataset.id = d.id;
        li.className = d.data.done ? 'done' : '';
        const box = document.createElement('input');
        box.type = 'checkbox';
        box.checked = !!d.data.done;
        box.addEventListener('change', () => toggle(d.id, box.checked));
        let title;
        if (editing === d.id) {
          title = document.createElement('input');
          title.className = 'edit';
          title.value = d.data.title || '';
          const done = () => {
            editing = null;
            if (title.value.trim() && title.value !== d.data.title) rename(d.id, title.value.trim());
            else render(space.list('items'));
          };
          title.addEventListener('keydown', (e) => e.key === 'Enter' && done());
          title.addEventListener('blur', done);
          queueMicrotask(() => title.focus());
        } else {
          title = document.createElement('span');
          title.className = 'title';
          title.textContent = d.data.title || '';
          title.addEventListener('dblclick', () => {
            editing = d.id;
            render(space.list('items'));
          });
        }
        const dot = document.createElement('span');
        if (d.pending) {
          dot.className = 'pending';
          dot.title = 'not yet saved on the relay';
        }
        const del = document.createElement('button');
        del.className = 'del';
        del.textContent = '×';
        del.title = 'delete';
        del.addEventListener('click', () => remove(d.id));
        li.append(box, title, dot, del);
        return li;
      }),
  );
  const open = items.filter((d) => !d.data.done).length;
  $('footer').textContent = '';
  const left = document.createElement('span');
  left.textContent = `${open} open · ${items.length - open} done`;
  const ident = document.createElement('span');
  ident.textContent = `list “${listName}”`;
  $('footer').append(left, ident);
}

function status() {
  const s = client.state;
  $('state').textContent = s;
  $('state').className = 'state ' + s;
  const bits = [];
  const n = client.pending;
  bits.push(n ? `${n} change${n === 1 ? '' : 's'} waiting to sync` : 'all changes saved');
  bits.push(client.leader ? 'this tab holds the connection' : 'synced through another tab');
  const here = space.present().length;
  if (here) bits.push(`${here} other${here === 1 ? '' : 's'} here`);
  $('meta').textContent = bits.join(' · ');
}

space.watch('items', (items) => {
  render(items);
  status();
});
client.watchState(status);
client.on('leader', status);
space.on('presence', status);
client.on('reject', (e) => console.warn('refused by the relay:', e.reason, e.message));
space.setPresence({ page: 'todo' });
setInterval(status, 1000);
