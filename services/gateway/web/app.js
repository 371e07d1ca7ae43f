// natter's browser client: sign-in, the sidebar, the socket and what it
// delivers. The conversation pane lives in pane.js.

import { api, session, storage, randomHex } from './api.js';
import { Socket } from './socket.js';
import { $, el, show, toast, entryItem, updateEntry, arrange, preview } from './ui.js';
import { state, conv, entryOf, entryByConversation, pane } from './pane.js';

const DEVICE_KEY = 'natter.device';
const READS_KEY = 'natter.reads';
const USERS_REFRESH_MS = 30000;
const BOOT_RETRY_MS = 5000;

const socket = new Socket(socketUrl, {
  frame: onFrame,
  state: showConnection,
  authFailed: () => endSession('Your session has ended. Please log in again.'),
  replaced: () => show($('#reclaim-button'), true),
  handshakeFailed: tokenStillGood,
}, socketProtocols);
pane.init({ socket, renderEntry, showView, onSent, dropGroup });

let bootTimer = 0;
let usersTimer = 0;
let listsGeneration = 0;
let refreshTimer = 0;
let searchTimer = 0;
/** The people search as typed, and where the next page of people starts. */
const people = { query: '', next: null };

// ---- session

async function boot() {
  bindAuth();
  bindSidebar();
  bindWindow();
  session.onUnauthorized(() => endSession('Your session has ended. Please log in again.'));
  if (session.token) resume();
  else showAuth('');
}

async function resume() {
  clearTimeout(bootTimer);
  try {
    await enterApp(await api.get('/api/me'));
  } catch (e) {
    if (e.status === 401) return; // endSession already ran
    showAuth(`${e.message} Retrying…`);
    bootTimer = setTimeout(() => { if (session.token && !state.me) resume(); }, BOOT_RETRY_MS);
  }
}

async function enterApp(me) {
  clearTimeout(bootTimer);
  state.me = me;
  loadReads();
  $('#me-name').textContent = me.displayName || me.username;
  show($('#auth-screen'), false);
  show($('#app'), true);
  pane.close();
  $('#sidebar').focus();
  const device = await claimDevice();
  if (state.me !== me) return; // logged out meanwhile
  state.device = device;
  socket.start();
  loadLists();
  usersTimer = setInterval(() => {
    // Presence is pushed only between contacts; others are polled.
    if (document.visibilityState === 'visible' && socket.connected) loadLists();
  }, USERS_REFRESH_MS);
}

function endSession(message) {
  socket.stop();
  session.clear();
  resetSession();
  showAuth(message);
}

async function logout() {
  const button = $('#logout-button');
  button.disabled = true;
  pane.close(); // sends a read that was due while the socket is still up
  socket.stop();
  try {
    await api.post('/api/auth/logout');
  } catch (e) {
    console.warn('natter: logout request failed', e.message);
  }
  button.disabled = false;
  session.clear();
  resetSession();
  showAuth('');
}

function resetSession() {
  clearInterval(usersTimer);
  clearTimeout(refreshTimer);
  listsGeneration++;
  pane.reset();
  state.me = null;
  state.users.clear();
  state.userOrder = [];
  state.groups.clear();
  state.convs.clear();
  $('#user-list').replaceChildren();
  $('#group-list').replaceChildren();
  $('#member-options').replaceChildren();
  toggleGroupForm(false);
  show($('#reclaim-button'), false);
  updateTitle();
}

function showAuth(message) {
  show($('#app'), false);
  show($('#auth-screen'), true);
  $('#password').value = '';
  authError(message);
  $('#username').focus();
}

function authError(message) {
  const node = $('#auth-error');
  node.textContent = message || '';
  show(node, Boolean(message));
}

async function tokenStillGood() {
  try {
    await api.get('/api/me');
    return true;
  } catch (e) {
    return e.status !== 401;
  }
}

/**
 * The browser's device id, created once. A second tab of the same browser
 * would replace the first one's connection (close 4000), so concurrent tabs
 * take numbered variants, each held by a Web Lock while the tab lives.
 */
let claimed = null;
function claimDevice() {
  claimed ||= pickDevice();
  return claimed;
}

async function pickDevice() {
  let base = storage.get(DEVICE_KEY);
  if (!base || !/^[A-Za-z0-9_.:-]{1,48}$/.test(base)) {
    base = `web-${randomHex(8)}`;
    storage.set(DEVICE_KEY, base);
  }
  if (!navigator.locks) return base;
  for (let slot = 1; slot <= 8; slot++) {
    const id = slot === 1 ? base : `${base}-${slot}`;
    if (await holdLock(`natter.device.${id}`)) return id;
  }
  return `${base}-${randomHex(3)}`;
}

function holdLock(name) {
  return new Promise((resolve) => {
    navigator.locks.request(name, { ifAvailable: true }, (lock) => {
      resolve(Boolean(lock));
      // Held until the tab goes away.
      return lock ? new Promise(() => {}) : undefined;
    }).catch(() => resolve(false));
  });
}

function socketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws?device=${encodeURIComponent(state.device)}`;
}

// The token rides in the subprotocol pair (DESIGN §4), not in the URL, so it
// never lands in a proxy's access log. The gateway answers `natter.v1`.
function socketProtocols() {
  return ['natter.v1', `bearer.${session.token || ''}`];
}

// Who read how far is only ever pushed, never listed over REST: remember it.
function loadReads() {
  try {
    const saved = JSON.parse(storage.get(READS_KEY) || '{}');
    for (const [id, seq] of Object.entries(saved)) conv(id).peerReadSeq = Number(seq) || 0;
  } catch { /* start afresh */ }
}

let readsTimer = 0;
function saveReads() {
  clearTimeout(readsTimer);
  readsTimer = setTimeout(() => {
    const entries = [...state.convs].filter(([, c]) => c.peerReadSeq > 0).slice(-500);
    storage.set(READS_KEY, JSON.stringify(Object.fromEntries(entries.map(([id, c]) => [id, c.peerReadSeq]))));
  }, 500);
}

// ---- auth form

function bindAuth() {
  let mode = 'login';
  $('#login-button').addEventListener('click', () => { mode = 'login'; });
  $('#signup-button').addEventListener('click', () => { mode = 'signup'; });
  $('#auth-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = event.submitter?.id === 'signup-button' ? 'signup'
      : event.submitter?.id === 'login-button' ? 'login' : mode;
    mode = 'login';
    submitAuth(chosen);
  });
}

async function submitAuth(mode) {
  const username = $('#username').value.trim();
  const password = $('#password').value;
  const displayName = $('#display-name').value.trim();
  if (!username || !password) {
    authError('Enter a username and a password.');
    return;
  }
  const body = { username, password };
  if (mode === 'signup' && displayName) body.displayName = displayName;
  const form = $('#auth-form');
  form.setAttribute('aria-busy', 'true');
  for (const b of form.querySelectorAll('button')) b.disabled = true;
  try {
    const res = await api.post(`/api/auth/${mode}`, body);
    session.save(res.token);
    authError('');
    $('#password').value = '';
    await enterApp(res.user);
  } catch (e) {
    authError(e.message);
  } finally {
    form.removeAttribute('aria-busy');
    for (const b of form.querySelectorAll('button')) b.disabled = false;
  }
}

// ---- lists

/** Users and conversations over REST; the server's counts win. */
async function loadLists() {
  const generation = ++listsGeneration;
  try {
    const [users, convs] = await Promise.all([api.get(peoplePath(null)), api.get('/api/conversations')]);
    if (generation !== listsGeneration || !state.me) return;
    applyConversations(Array.isArray(convs) ? convs : convs.conversations || []);
    applyUsers(Array.isArray(users) ? users : users.users || [], !people.query);
    people.next = users.next || null;
    renderLists();
  } catch (e) {
    if (e.status === 401 || !state.me) return;
    console.warn('natter: lists not loaded', e.message);
    if (e.status) toast(`Could not load conversations: ${e.message}`);
  }
}

/** One page of people (the server's limit is 200), searched when a query is typed. */
function peoplePath(after) {
  const params = new URLSearchParams({ limit: '200' });
  if (people.query) params.set('q', people.query);
  if (after) params.set('after', after);
  return `/api/users?${params}`;
}

async function morePeople() {
  if (!people.next) return;
  try {
    const page = await api.get(peoplePath(people.next));
    const order = state.userOrder.slice();
    applyUsers(page.users || [], false);
    state.userOrder = order.concat(state.userOrder.filter((id) => !order.includes(id)));
    people.next = page.next || null;
    renderLists();
  } catch (e) {
    if (e.status) toast(`Could not load more people: ${e.message}`);
  }
}

function searchPeople() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    people.query = $('#people-search').value.trim();
    loadLists();
  }, 250);
}

/** The open person's contact button: add or remove them. */
function refreshContactButton() {
  const button = $('#contact-button');
  const open = state.open;
  const user = open?.kind === 'user' ? state.users.get(open.id) : null;
  button.hidden = !user;
  if (!user) return;
  button.textContent = user.isContact ? 'Remove contact' : 'Add contact';
  button.setAttribute('aria-pressed', user.isContact ? 'true' : 'false');
}

async function toggleContact() {
  const open = state.open;
  const user = open?.kind === 'user' ? state.users.get(open.id) : null;
  if (!user) return;
  const path = `/api/contacts/${encodeURIComponent(open.id)}`;
  try {
    if (user.isContact) await api.del(path);
    else await api.put(path);
    user.isContact = !user.isContact;
    refreshContactButton();
    renderLists();
    refreshListsSoon();
  } catch (e) {
    toast(`Could not update contacts: ${e.message}`);
  }
}

function refreshListsSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadLists(), 400);
}

function applyConversations(list) {
  for (const c of list) {
    const record = conv(c.id);
    record.lastReadSeq = Math.max(record.lastReadSeq, Number(c.lastReadSeq) || 0);
    if (c.lastMessage) record.lastSeq = Math.max(record.lastSeq, c.lastMessage.seq);
    if (c.kind === 'group') {
      const id = c.groupId || c.id;
      const group = state.groups.get(id) || { id, members: null, memberCount: null };
      group.name = c.name || group.name || 'Group';
      group.lastMessage = c.lastMessage || group.lastMessage || null;
      group.activity = c.lastActivityAt || group.activity;
      group.unreadCount = pane.isOpen(`group:${id}`) ? 0 : Number(c.unreadCount) || 0;
      state.groups.set(id, group);
    } else if (c.peer?.id) {
      state.directKnown.add(c.peer.id);
    }
  }
  // Groups are never dropped here: leaving one arrives as group_updated, and
  // a list fetched just before a group was created must not remove it.
}

/** Takes a page of people; `replace` drops those not on it (a full, unsearched list). */
function applyUsers(list, replace = true) {
  const order = [];
  for (const u of list) {
    if (!u?.id) continue;
    const prev = state.users.get(u.id);
    const exists = Boolean(u.lastMessage) || state.directKnown.has(u.id) || Boolean(prev?.exists);
    const user = Object.assign(prev || {}, u, { exists });
    if (pane.isOpen(`user:${u.id}`)) user.unreadCount = 0;
    if (u.lastMessage && u.conversationId) {
      const record = conv(u.conversationId);
      record.lastSeq = Math.max(record.lastSeq, u.lastMessage.seq);
    }
    state.users.set(u.id, user);
    order.push(u.id);
  }
  if (replace) {
    const listed = new Set(order);
    for (const id of state.users.keys()) if (!listed.has(id)) state.users.delete(id);
  }
  // Contacts first, each part in the server's order.
  const contact = (id) => (state.users.get(id)?.isContact ? 0 : 1);
  state.userOrder = order.map((id, i) => [contact(id), i, id]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
}

function renderLists() {
  const users = $('#user-list');
  arrange(users, state.userOrder.map((id) => renderEntry(`user:${id}`)).filter(Boolean));
  show($('#users-empty'), state.userOrder.length === 0);
  show($('#more-people'), Boolean(people.next));
  refreshContactButton();
  const groups = [...state.groups.values()].sort((a, b) => activity(b) - activity(a));
  arrange($('#group-list'), groups.map((g) => renderEntry(`group:${g.id}`)).filter(Boolean));
  show($('#groups-empty'), groups.length === 0);
  if (!$('#new-group-form').hidden) renderMemberOptions();
  pane.refreshHeader();
  updateTitle();
}

function activity(group) {
  const at = group.lastMessage?.createdAt || group.activity || group.createdAt;
  return at ? Date.parse(at) || 0 : 0;
}

/** Creates or updates the sidebar item of `key` ('user:<id>' | 'group:<id>'). */
function renderEntry(key) {
  const entry = entryOf(key);
  if (!entry) return null;
  const [kind, id] = key.split(':');
  const list = $(kind === 'user' ? '#user-list' : '#group-list');
  const li = entryItem(list, kind, id, () => pane.open(kind, id));
  updateEntry(li, {
    name: kind === 'user' ? entry.displayName || entry.username : entry.name,
    preview: entryPreview(entry, kind),
    unread: entry.unreadCount,
    online: entry.online,
    lastSeen: entry.lastSeen,
    selected: pane.isOpen(key),
  });
  li.classList.toggle('contact', kind === 'user' && Boolean(entry.isContact));
  if (pane.isOpen(key)) refreshContactButton();
  updateTitle();
  return li;
}

function entryPreview(entry, kind) {
  const m = entry.lastMessage;
  if (!m) return kind === 'group' ? 'No messages yet' : '';
  if (kind === 'group' && m.senderId !== state.me.id) return `${m.senderName}: ${preview(m, state.me.id)}`;
  return preview(m, state.me.id);
}

function updateTitle() {
  let total = 0;
  for (const u of state.users.values()) total += u.unreadCount || 0;
  for (const g of state.groups.values()) total += g.unreadCount || 0;
  document.title = total ? `(${total}) natter` : 'natter';
}

function dropGroup(id) {
  state.groups.delete(id);
  document.querySelector(`#group-list li[data-group-id="${CSS.escape(id)}"]`)?.remove();
  if (pane.isOpen(`group:${id}`)) pane.close();
}

// ---- new group

function bindSidebar() {
  $('#logout-button').addEventListener('click', logout);
  $('#reclaim-button').addEventListener('click', () => {
    show($('#reclaim-button'), false);
    socket.reclaim();
  });
  $('#new-group-button').addEventListener('click', () => toggleGroupForm($('#new-group-form').hidden));
  $('#cancel-group-button').addEventListener('click', () => {
    toggleGroupForm(false);
    $('#new-group-button').focus();
  });
  $('#new-group-form').addEventListener('submit', createGroup);
  $('#back-button').addEventListener('click', () => pane.close());
  $('#people-search').addEventListener('input', searchPeople);
  $('#more-people').addEventListener('click', morePeople);
  $('#contact-button').addEventListener('click', toggleContact);
}

function toggleGroupForm(open) {
  const form = $('#new-group-form');
  show(form, open);
  $('#new-group-button').setAttribute('aria-expanded', String(open));
  groupError('');
  if (open) {
    renderMemberOptions();
    $('#group-name').focus();
  } else {
    form.reset();
  }
}

function renderMemberOptions() {
  const box = $('#member-options');
  // Rebuilt only when the people change, so focus and ticks stay put.
  if (box.dataset.users === state.userOrder.join() && box.childElementCount) return;
  box.dataset.users = state.userOrder.join();
  const checked = new Set([...box.querySelectorAll('input:checked')].map((i) => i.value));
  const options = state.userOrder.map((id) => {
    const u = state.users.get(id);
    const input = el('input', { type: 'checkbox', name: 'member', value: id, checked: checked.has(id) });
    return el('label', { class: 'check' }, input, el('span', { text: u.displayName || u.username }));
  });
  box.replaceChildren(...options);
  if (!options.length) box.append(el('p', { class: 'empty', text: 'No one to add yet.' }));
}

function groupError(message) {
  const node = $('#group-error');
  node.textContent = message || '';
  show(node, Boolean(message));
}

async function createGroup(event) {
  event.preventDefault();
  const name = $('#group-name').value.trim();
  const memberIds = [...document.querySelectorAll('#member-options input[name="member"]:checked')]
    .map((input) => input.value);
  if (!name) {
    groupError('Give the group a name.');
    $('#group-name').focus();
    return;
  }
  const button = $('#create-group-button');
  button.disabled = true;
  try {
    const res = await api.post('/api/groups', { name, memberIds });
    if (!state.me) return;
    upsertGroup(res.group);
    toggleGroupForm(false);
    pane.open('group', res.group.id);
  } catch (e) {
    groupError(e.message);
  } finally {
    button.disabled = false;
  }
}

/** Adds or updates a group from a server `group` object (its members are
 * read over REST a page at a time, never carried in it). */
function upsertGroup(g) {
  if (!g?.id) return false;
  const group = state.groups.get(g.id) || { id: g.id, unreadCount: 0, lastMessage: null, members: null };
  group.name = g.name;
  group.memberCount = g.memberCount ?? group.memberCount;
  group.createdBy = g.createdBy || group.createdBy;
  group.createdAt = g.createdAt || group.createdAt;
  state.groups.set(g.id, group);
  renderLists();
  if (pane.isOpen(`group:${g.id}`)) pane.refreshHeader();
  return true;
}

/** A `group_updated`: the group changed, we left it, or it was deleted. */
function onGroupUpdated(d) {
  const g = d.group;
  const change = d.change || {};
  if (!g?.id) return;
  const gone = change.kind === 'deleted'
    || (change.kind === 'member_removed' && (change.userIds || []).includes(state.me.id));
  if (gone) {
    if (state.groups.has(g.id) && pane.isOpen(`group:${g.id}`)) {
      toast(change.kind === 'deleted' ? `${g.name} was deleted.` : `You are no longer a member of ${g.name}.`);
    }
    dropGroup(g.id);
    return;
  }
  const known = state.groups.get(g.id);
  // Who is in it changed: the member list is read again when shown.
  if (known && change.kind !== 'created') known.members = null;
  upsertGroup(g);
  if (pane.isOpen(`group:${g.id}`)) pane.loadGroup(g.id);
}

// ---- socket frames

const handlers = {
  ready: onReady,
  resync_required: () => {
    loadLists();
    pane.reload();
  },
  receive_direct_message: (d) => onMessage(d.message),
  receive_group_message: (d) => onMessage(d.message),
  message_sent: (d, frame) => onSent(d.message, frame.ref),
  messages_read: onRead,
  group_updated: onGroupUpdated,
  typing: (d) => pane.typing(d.conversationId, d.userId),
  presence: onPresence,
  error: onServerError,
  pong: () => {},
};

function onFrame(frame) {
  if (!state.me) return;
  const handle = handlers[frame.event];
  if (handle) handle(frame.data || {}, frame);
  else console.warn('natter: unknown event', frame.event);
}

function onReady() {
  show($('#reclaim-button'), false);
  loadLists();
  pane.reconnected();
}

function onSent(m, ref) {
  pane.settle(ref);
  onMessage(m);
}

function onMessage(m) {
  if (!m?.id || !m.conversationId) return;
  const own = m.senderId === state.me.id;
  const key = m.groupId ? `group:${m.groupId}` : `user:${own ? m.receiverId : m.senderId}`;
  const record = conv(m.conversationId);
  const isNew = m.seq > record.lastSeq;
  if (isNew) record.lastSeq = m.seq;
  const entry = entryOf(key);
  if (!entry) {
    refreshListsSoon(); // someone new, or a group we just joined
    return;
  }
  if (!m.groupId) {
    entry.exists = true;
    entry.conversationId = m.conversationId;
    state.directKnown.add(entry.id);
  }
  if (!entry.lastMessage || m.seq >= entry.lastMessage.seq) entry.lastMessage = m;
  if (own && m.clientMsgId) pane.settle(m.clientMsgId);
  if (pane.isOpen(key)) pane.receive(m);
  else if (!own && isNew) entry.unreadCount = (entry.unreadCount || 0) + 1;
  if (m.groupId) renderLists(); // activity order may change
  else renderEntry(key);
}

function onRead(d) {
  const record = conv(d.conversationId);
  const upTo = Number(d.upToSeq) || 0;
  if (d.readerId === state.me.id) {
    // Read on another of our devices.
    record.lastReadSeq = Math.max(record.lastReadSeq, upTo);
    const found = entryByConversation(d.conversationId);
    if (found && upTo >= record.lastSeq && found.entry.unreadCount) {
      found.entry.unreadCount = 0;
      renderEntry(found.key);
    }
    return;
  }
  if (upTo <= record.peerReadSeq) return;
  record.peerReadSeq = upTo;
  saveReads();
  pane.peerRead(d.conversationId, upTo);
}

function onPresence(d) {
  const user = state.users.get(d.userId);
  if (!user) return;
  user.online = Boolean(d.online);
  user.lastSeen = d.lastSeen;
  renderEntry(`user:${user.id}`);
  if (pane.isOpen(`user:${user.id}`)) pane.refreshHeader();
}

function onServerError(d, frame) {
  const message = d.message || d.code || 'unknown error';
  const ref = typeof frame.ref === 'string' ? frame.ref : '';
  if (pane.failed(ref, message, d.code)) return;
  if (ref.startsWith('raw:send')) toast(`Failed to send message: ${message}`);
  else if (/^(typing|read):/.test(ref)) console.warn('natter: server refused', ref, message);
  else toast(`Server error: ${message}`);
}

function showConnection(connState, text) {
  const node = $('#connection-status');
  node.dataset.state = connState;
  node.textContent = text;
}

// ---- window

function showView(view) {
  $('#app').dataset.view = view;
}

function bindWindow() {
  window.addEventListener('offline', () => socket.offline());
  window.addEventListener('online', () => {
    if (state.me) socket.online();
    else if (session.token) resume();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') pane.markReadSoon();
  });
  window.addEventListener('pagehide', () => socket.flushAck());
  // For the seed's test case 8 (emit a raw frame from DevTools):
  // natterDebug.emit('send_direct_message', {receiverId: 'fake', content: 'x'}).
  let n = 0;
  window.natterDebug = {
    emit(event, data) {
      const ref = `raw:${event}:${++n}`;
      return socket.send({ event, data, ref }) ? ref : null;
    },
  };
}

boot();
