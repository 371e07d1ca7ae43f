// The open conversation: history, sending, read ticks, typing. Also the
// client's shared state, which app.js fills from REST and the socket.

import { api, randomHex } from './api.js';
import {
  $, show, toast, messageItem, setTimestamp, setStatus, statusOf, insertBySeq,
} from './ui.js';

const PAGE = 50;
const CATCH_UP_PAGE = 200;
const SEND_TIMEOUT_MS = 15000;
const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 3000;
const READ_GAP_MS = 300;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 80;
const MEMBERS_PAGE = 50; // the members a group's header names come from
const SHOWN_MEMBERS = 10;

export const state = {
  me: null,
  device: null,
  users: new Map(), // id → {id, username, displayName, online, conversationId, unreadCount, lastMessage, exists}
  userOrder: [],
  groups: new Map(), // id → {id, name, members, unreadCount, lastMessage}
  convs: new Map(), // conversationId → {lastSeq, lastReadSeq, readSent, peerReadSeq}
  directKnown: new Set(), // peers with whom a direct conversation exists
  pending: new Map(), // clientMsgId → {clientMsgId, key, kind, targetId, content, createdAt, status, timer}
  drafts: new Map(), // conversation key → unsent text
  open: null,
};

export function conv(id) {
  let record = state.convs.get(id);
  if (!record) {
    record = { lastSeq: 0, lastReadSeq: 0, readSent: 0, peerReadSeq: 0 };
    state.convs.set(id, record);
  }
  return record;
}

export function entryOf(key) {
  const [kind, id] = key.split(':');
  return kind === 'user' ? state.users.get(id) : state.groups.get(id);
}

export function entryByConversation(conversationId) {
  if (state.groups.has(conversationId)) {
    return { key: `group:${conversationId}`, entry: state.groups.get(conversationId) };
  }
  for (const user of state.users.values()) {
    if (user.conversationId === conversationId) return { key: `user:${user.id}`, entry: user };
  }
  return null;
}

let ctx; // {socket, renderEntry, showView, onSent}
let readTimer = 0;
let lastReadSent = 0;
let lastTypingSent = 0;

const list = () => $('#messages');
const input = () => $('#message-input');

// ---- open / close

function open(kind, id) {
  const entry = entryOf(`${kind}:${id}`);
  if (!entry) return;
  const key = `${kind}:${id}`;
  ctx.showView('conversation');
  if (state.open?.key === key) {
    focusInput();
    return;
  }
  leave();
  const previous = state.open?.key;
  const conversationId = kind === 'group' ? id : entry.exists ? entry.conversationId : null;
  state.open = {
    kind, id, key, conversationId,
    hasMore: false, loading: false, loaded: false,
    items: new Map(), typers: new Map(),
  };
  entry.unreadCount = 0;
  clearPane();
  setConversationId(conversationId);
  refreshHeader();
  input().disabled = false;
  input().value = state.drafts.get(key) || '';
  autoGrow();
  updateSendButton();
  if (previous) ctx.renderEntry(previous);
  ctx.renderEntry(key);
  for (const p of state.pending.values()) if (p.key === key) appendPending(p);
  if (conversationId) loadPage(state.open);
  else showEmpty(true);
  if (kind === 'group' && !entry.members) loadGroup(id);
  focusInput();
}

function close() {
  leave();
  const previous = state.open?.key;
  state.open = null;
  clearPane();
  setConversationId(null);
  $('#conversation-title').textContent = 'No conversation selected';
  $('#conversation-subtitle').textContent = 'Pick someone or a group to start chatting.';
  input().value = '';
  input().disabled = true;
  updateSendButton();
  ctx?.showView('list');
  if (previous && entryOf(previous)) ctx.renderEntry(previous);
}

// Before switching away: keep the draft, and send a read that was due.
function leave() {
  saveDraft();
  if (readTimer) markRead();
}

function reset() {
  for (const p of state.pending.values()) clearTimeout(p.timer);
  state.pending.clear();
  state.drafts.clear();
  state.directKnown.clear();
  close();
}

function clearPane() {
  $('#delete-group-button').hidden = true;
  list().replaceChildren();
  show($('#load-older'), false);
  showEmpty(false);
  $('#typing-indicator').textContent = '';
}

function setConversationId(id) {
  if (state.open) state.open.conversationId = id;
  $('#conversation').dataset.conversationId = id || '';
}

function showEmpty(visible) {
  show($('#empty-state'), visible);
}

function isOpen(key) {
  return state.open?.key === key;
}

function focusInput() {
  // On phones focusing pops the keyboard over the history; leave it to a tap.
  if (window.matchMedia('(min-width: 701px)').matches) input().focus();
}

function refreshHeader() {
  const o = state.open;
  if (!o) return;
  const entry = entryOf(o.key);
  if (!entry) return;
  const title = $('#conversation-title');
  const subtitle = $('#conversation-subtitle');
  if (o.kind === 'user') {
    title.textContent = entry.displayName || entry.username;
    const seen = entry.lastSeen ? `last seen ${new Date(entry.lastSeen).toLocaleString()}` : 'offline';
    subtitle.textContent = `@${entry.username} · ${entry.online ? 'online' : seen}`;
  } else {
    title.textContent = entry.name;
    const names = (entry.members || []).slice(0, SHOWN_MEMBERS)
      .map((m) => (m.id === state.me.id ? 'you' : m.displayName));
    const count = entry.memberCount ?? entry.members?.length ?? 0;
    const more = count > names.length ? ', …' : '';
    subtitle.textContent = names.length ? `${count} members: ${names.join(', ')}${more}` : 'Group';
  }
  const deletable = o.kind === 'group' && Boolean(state.me) && entry.createdBy === state.me.id;
  $('#delete-group-button').hidden = !deletable;
}

/** The group's details and its first page of members: a group may hold a
 * thousand, so only the first names are shown and never all fetched. */
async function loadGroup(id) {
  const path = `/api/groups/${encodeURIComponent(id)}`;
  try {
    const [details, page] = await Promise.all([
      api.get(path),
      api.get(`${path}/members?limit=${MEMBERS_PAGE}`),
    ]);
    const group = state.groups.get(id);
    if (group && details?.group) {
      group.name = details.group.name;
      group.memberCount = details.group.memberCount;
      group.createdBy = details.group.createdBy;
      group.members = page?.members || [];
      if (isOpen(`group:${id}`)) refreshHeader();
    }
  } catch (e) {
    console.warn('natter: group not loaded', e.message);
  }
}

/** Deletes the open group, if we created it, after asking. */
async function deleteGroup() {
  const o = state.open;
  const group = o?.kind === 'group' ? state.groups.get(o.id) : null;
  if (!group || !window.confirm(`Delete ${group.name} for all its members?`)) return;
  const button = $('#delete-group-button');
  button.disabled = true;
  try {
    await api.del(`/api/groups/${encodeURIComponent(group.id)}`);
    ctx.dropGroup(group.id);
  } catch (e) {
    console.warn('natter: group not deleted', e.message);
  } finally {
    button.disabled = false;
  }
}

// ---- history

/** Loads the newest page, or the page before `before`. */
async function loadPage(o, before) {
  if (o.loading || !o.conversationId) return;
  o.loading = true;
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (before) query.set('before', String(before));
  try {
    const res = await api.get(`/api/conversations/${encodeURIComponent(o.conversationId)}/messages?${query}`);
    if (state.open !== o) return;
    const messages = res?.messages || [];
    const box = list();
    const fromBottom = box.scrollHeight - box.scrollTop;
    for (const m of messages) {
      noteSeq(m);
      place(m);
    }
    if (before) box.scrollTop = box.scrollHeight - fromBottom;
    else scrollToBottom();
    if (before || !o.loaded) o.hasMore = Boolean(res?.hasMore);
    o.loaded = true;
    show($('#load-older'), o.hasMore);
    showEmpty(box.children.length === 0);
    markReadSoon();
  } catch (e) {
    if (state.open === o && e.status !== 401) toast(`Could not load messages: ${e.message}`);
  } finally {
    o.loading = false;
  }
}

function loadOlder() {
  const o = state.open;
  if (!o || !o.hasMore || o.loading) return;
  const first = [...list().children].find((li) => li.dataset.seq !== '');
  if (first) loadPage(o, Number(first.dataset.seq));
}

/** After a reconnect: whatever the replay did not bring, REST does. */
async function catchUp() {
  const o = state.open;
  if (!o?.conversationId || !o.loaded || o.loading) return;
  const seqs = [...list().children].map((li) => Number(li.dataset.seq)).filter((s) => s > 0);
  const after = seqs.length ? Math.max(...seqs) : 0;
  if (!after) return;
  try {
    const q = `after=${after}&limit=${CATCH_UP_PAGE}`;
    const res = await api.get(`/api/conversations/${encodeURIComponent(o.conversationId)}/messages?${q}`);
    if (state.open !== o) return;
    if (res?.hasMore) {
      reload();
      return;
    }
    for (const m of res?.messages || []) {
      noteSeq(m);
      receive(m);
    }
  } catch (e) {
    console.warn('natter: catch-up failed', e.message);
  }
}

/** Drops what is shown and loads the newest page again (resync). */
function reload() {
  const o = state.open;
  if (!o?.conversationId) return;
  o.items.clear();
  o.loaded = false;
  clearPane();
  for (const p of state.pending.values()) if (p.key === o.key) appendPending(p);
  loadPage(o);
}

function noteSeq(m) {
  const record = conv(m.conversationId);
  if (m.seq > record.lastSeq) record.lastSeq = m.seq;
  if (m.senderId === state.me.id && m.clientMsgId) settle(m.clientMsgId);
}

// ---- rendering

function ownStatus(m) {
  const o = state.open;
  return o?.kind === 'user' && m.seq <= conv(m.conversationId).peerReadSeq ? 'read' : 'sent';
}

/** Shows `m` once: dedupes by id and turns our pending copy into the real one. */
function place(m) {
  const o = state.open;
  const box = list();
  const own = m.senderId === state.me.id;
  let li = o.items.get(m.id);
  if (li) return li;
  if (own && m.clientMsgId) {
    li = box.querySelector(`li.own[data-client-msg-id="${CSS.escape(m.clientMsgId)}"]`);
  }
  if (li) {
    li.dataset.messageId = m.id;
    li.dataset.seq = String(m.seq);
    setTimestamp(li, m.createdAt);
    setStatus(li, ownStatus(m));
    li.remove();
  } else {
    li = messageItem(m, own, own ? ownStatus(m) : null, retry);
  }
  o.items.set(m.id, li);
  insertBySeq(box, li, m.seq);
  showEmpty(false);
  return li;
}

/** A live message for the open conversation. */
function receive(m) {
  const o = state.open;
  if (!o) return;
  if (!o.conversationId) setConversationId(m.conversationId);
  const own = m.senderId === state.me.id;
  const follow = own || nearBottom();
  place(m);
  if (follow) scrollToBottom();
  if (!own) {
    stopTyping(m.senderId);
    markReadSoon();
  }
}

function nearBottom() {
  const box = list();
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  const box = list();
  box.scrollTop = box.scrollHeight;
}

function peerRead(conversationId, upTo) {
  const o = state.open;
  if (o?.kind !== 'user' || o.conversationId !== conversationId) return;
  for (const li of list().querySelectorAll('li.own')) {
    if (li.dataset.seq !== '' && Number(li.dataset.seq) <= upTo && statusOf(li) === 'sent') {
      setStatus(li, 'read');
    }
  }
}

// ---- reading

/** Marks the open conversation read now, or once READ_GAP_MS after the last one. */
function markReadSoon() {
  if (readTimer) return;
  const wait = lastReadSent + READ_GAP_MS - Date.now();
  if (wait <= 0) markRead();
  else readTimer = setTimeout(markRead, wait);
}

function markRead() {
  clearTimeout(readTimer);
  readTimer = 0;
  const o = state.open;
  if (!o?.conversationId || document.visibilityState !== 'visible') return;
  const record = conv(o.conversationId);
  const upToSeq = record.lastSeq;
  if (upToSeq <= Math.max(record.lastReadSeq, record.readSent)) return;
  const conversationId = o.conversationId;
  const frame = { event: 'mark_read', data: { conversationId, upToSeq }, ref: `read:${upToSeq}` };
  if (ctx.socket.send(frame)) {
    // Confirmed when our own messages_read comes back; resent after a reconnect.
    record.readSent = upToSeq;
    lastReadSent = Date.now();
  } else if (navigator.onLine) {
    api.post(`/api/conversations/${encodeURIComponent(conversationId)}/read`, { upToSeq })
      .then(() => { record.lastReadSeq = Math.max(record.lastReadSeq, upToSeq); })
      .catch((e) => console.warn('natter: read position not saved', e.message));
  }
  // Offline: reconnected() tries again.
}

/** A new session is up: what the old one may have lost is sent again. */
function reconnected() {
  for (const record of state.convs.values()) record.readSent = 0;
  resendPending();
  catchUp();
  markReadSoon();
}

// ---- sending

function send() {
  const o = state.open;
  const content = input().value.trim();
  if (!o || !content) return;
  input().value = '';
  state.drafts.delete(o.key);
  autoGrow();
  updateSendButton();
  const p = {
    clientMsgId: randomHex(16),
    key: o.key,
    kind: o.kind,
    targetId: o.id,
    content,
    createdAt: new Date().toISOString(),
    status: 'pending',
    timer: 0,
  };
  state.pending.set(p.clientMsgId, p);
  appendPending(p);
  scrollToBottom();
  transmit(p);
}

function appendPending(p) {
  const li = messageItem({
    senderName: state.me.displayName || state.me.username,
    content: p.content,
    createdAt: p.createdAt,
    clientMsgId: p.clientMsgId,
  }, true, p.status, retry);
  list().append(li);
  showEmpty(false);
}

function pendingItem(p) {
  if (!isOpen(p.key)) return null;
  return list().querySelector(`li.own[data-client-msg-id="${CSS.escape(p.clientMsgId)}"][data-seq=""]`);
}

function transmit(p) {
  p.status = 'pending';
  p.firstTry ??= Date.now();
  const li = pendingItem(p);
  if (li) setStatus(li, 'pending');
  const data = p.kind === 'group'
    ? { groupId: p.targetId, content: p.content, clientMsgId: p.clientMsgId }
    : { receiverId: p.targetId, content: p.content, clientMsgId: p.clientMsgId };
  const event = p.kind === 'group' ? 'send_group_message' : 'send_direct_message';
  clearTimeout(p.timer);
  p.timer = setTimeout(() => fail(p, 'no reply from the server'), SEND_TIMEOUT_MS);
  if (ctx.socket.send({ event, data, ref: p.clientMsgId })) return;
  if (!navigator.onLine) {
    fail(p, 'you are offline');
    return;
  }
  // The socket is down: the same pipeline over REST. Retries are safe,
  // the clientMsgId makes them idempotent.
  api.post('/api/messages', data)
    .then((res) => {
      if (res?.message) ctx.onSent(res.message, p.clientMsgId);
    })
    .catch((e) => {
      if (e.code === 'unavailable' && sendAgain(p)) return;
      if (e.status !== 401) fail(p, e.message);
    });
}

/**
 * A send answered `unavailable` may still have been stored (DESIGN.md §4):
 * it goes again with the same clientMsgId, which makes that safe, after a
 * pause that doubles from 250 ms up to 4 s, for as long as SEND_TIMEOUT_MS
 * from its first try. False once that is over: then it has failed.
 */
function sendAgain(p) {
  if (p.status !== 'pending' || Date.now() - p.firstTry >= SEND_TIMEOUT_MS) return false;
  p.attempts = (p.attempts ?? 0) + 1;
  const pause = Math.min(4000, 250 * 2 ** (p.attempts - 1));
  clearTimeout(p.retryTimer);
  p.retryTimer = setTimeout(() => {
    if (state.pending.get(p.clientMsgId) === p && p.status === 'pending') transmit(p);
  }, pause);
  return true;
}

function fail(p, reason) {
  if (state.pending.get(p.clientMsgId) !== p || p.status === 'failed') return;
  clearTimeout(p.timer);
  clearTimeout(p.retryTimer);
  p.status = 'failed';
  const li = pendingItem(p);
  if (li) setStatus(li, 'failed');
  toast(`Failed to send message: ${reason}`);
}

/**
 * The server refused the send with ref `ref` (error `code`); false if it
 * was not one. An `unavailable` send is sent again (see sendAgain).
 */
function failed(ref, reason, code) {
  const p = state.pending.get(ref);
  if (!p) return false;
  if (code === 'unavailable' && sendAgain(p)) return true;
  fail(p, reason);
  return true;
}

/** A pending send is confirmed (the message itself is placed separately). */
function settle(clientMsgId) {
  const p = clientMsgId && state.pending.get(clientMsgId);
  if (!p) return;
  clearTimeout(p.timer);
  clearTimeout(p.retryTimer);
  state.pending.delete(clientMsgId);
}

function retry(li) {
  const p = state.pending.get(li.dataset.clientMsgId);
  if (!p) return;
  // Asked for by hand: a fresh period of automatic retries.
  p.firstTry = undefined;
  p.attempts = 0;
  transmit(p);
}

function resendPending() {
  for (const p of state.pending.values()) if (p.status === 'pending') transmit(p);
}

// ---- typing

function typing(conversationId, userId) {
  const o = state.open;
  if (!o || conversationId !== o.conversationId || userId === state.me.id) return;
  clearTimeout(o.typers.get(userId));
  o.typers.set(userId, setTimeout(() => stopTyping(userId), TYPING_SHOWN_MS));
  renderTyping();
}

function stopTyping(userId) {
  const o = state.open;
  if (!o?.typers.has(userId)) return;
  clearTimeout(o.typers.get(userId));
  o.typers.delete(userId);
  renderTyping();
}

function nameOf(userId) {
  const user = state.users.get(userId);
  if (user) return user.displayName || user.username;
  const member = entryOf(state.open.key)?.members?.find((m) => m.id === userId);
  return member?.displayName || 'Someone';
}

function renderTyping() {
  const names = [...state.open.typers.keys()].map(nameOf);
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = 'Several people are typing…';
  $('#typing-indicator').textContent = text;
}

function sendTyping() {
  const o = state.open;
  if (!o?.conversationId || !input().value.trim()) return;
  const now = Date.now();
  if (now - lastTypingSent < TYPING_EVERY_MS) return;
  const frame = { event: 'typing', data: { conversationId: o.conversationId }, ref: `typing:${now}` };
  if (ctx.socket.send(frame)) lastTypingSent = now;
}

// ---- composer

function updateSendButton() {
  $('#send-button').disabled = !state.open || !input().value.trim();
}

function autoGrow() {
  const box = input();
  box.style.height = 'auto';
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
}

function saveDraft() {
  const o = state.open;
  if (!o) return;
  const text = input().value;
  if (text.trim()) state.drafts.set(o.key, text);
  else state.drafts.delete(o.key);
}

function bindComposer() {
  const box = input();
  box.addEventListener('input', () => {
    updateSendButton();
    autoGrow();
    sendTyping();
  });
  box.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $('#composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  list().addEventListener('scroll', () => {
    if (list().scrollTop < NEAR_TOP_PX) loadOlder();
  }, { passive: true });
  $('#load-older').addEventListener('click', loadOlder);
}

export const pane = {
  init(context) {
    ctx = context;
    bindComposer();
    $('#delete-group-button').addEventListener('click', deleteGroup);
    close();
  },
  open,
  close,
  reset,
  reload,
  isOpen,
  refreshHeader,
  loadGroup,
  receive,
  settle,
  failed,
  typing,
  peerRead,
  markReadSoon,
  reconnected,
};
