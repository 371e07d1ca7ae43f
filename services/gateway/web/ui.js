// DOM building blocks. Text goes in through textContent only, never markup.

export const $ = (selector) => document.querySelector(selector);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') {
      node.setAttribute(key, value === true ? '' : String(value));
    } else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function show(node, visible) {
  node.hidden = !visible;
}

// ---- time ----

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit',
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

export function formatTime(date) {
  const now = new Date();
  const today = date.getFullYear() === now.getFullYear()
    && date.getMonth() === now.getMonth() && date.getDate() === now.getDate();
  return today ? timeFormat.format(date) : dayTimeFormat.format(date);
}

export function formatFull(date) {
  return fullFormat.format(date);
}

// ---- toasts ----

const TOAST_MS = 7000;
const MAX_TOASTS = 4;

export function toast(text) {
  const box = $('#toasts');
  const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×' });
  const item = el('div', { class: 'toast', role: 'alert' }, el('span', { text }), close);
  const remove = () => item.remove();
  close.addEventListener('click', remove);
  setTimeout(remove, TOAST_MS);
  box.append(item);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
}

// ---- sidebar entries ----

/** The li for a user or group, created on first use; `kind` is 'user' | 'group'. */
export function entryItem(list, kind, id, onSelect) {
  const attr = kind === 'user' ? 'data-user-id' : 'data-group-id';
  let li = list.querySelector(`li[${attr}="${CSS.escape(id)}"]`);
  if (li) return li;
  const button = el('button', { type: 'button', class: 'entry' },
    kind === 'user' ? el('span', { class: 'online-dot', role: 'img', 'aria-label': 'offline' })
      : el('span', { class: 'group-mark', 'aria-hidden': 'true', text: '#' }),
    el('span', { class: 'entry-main' },
      el('span', { class: 'entry-name' }),
      el('span', { class: 'entry-preview' })),
    el('span', { class: 'unread-badge', hidden: true }),
    el('span', { class: 'visually-hidden unread-label', hidden: true, text: ' unread' }));
  button.addEventListener('click', onSelect);
  li = el('li', { class: kind, [attr]: id }, button);
  return li;
}

export function updateEntry(li, { name, preview, unread, online, lastSeen, selected }) {
  li.querySelector('.entry-name').textContent = name;
  li.querySelector('.entry-preview').textContent = preview || '';
  const badge = li.querySelector('.unread-badge');
  badge.textContent = String(unread || 0);
  badge.hidden = !unread;
  li.querySelector('.unread-label').hidden = !unread;
  const button = li.querySelector('.entry');
  button.setAttribute('aria-current', selected ? 'true' : 'false');
  li.classList.toggle('selected', Boolean(selected));
  const dot = li.querySelector('.online-dot');
  if (dot) {
    dot.classList.toggle('online', Boolean(online));
    dot.setAttribute('aria-label', online ? 'online' : 'offline');
    dot.title = online ? 'Online' : lastSeen ? `Last seen ${formatTime(new Date(lastSeen))}` : 'Offline';
  }
}

/** Puts `items` into `list` in order, touching the DOM only if it differs. */
export function arrange(list, items) {
  const current = Array.from(list.children);
  const same = current.length === items.length && items.every((li, i) => current[i] === li);
  if (same) return;
  const keep = new Set(items);
  for (const li of current) if (!keep.has(li)) li.remove();
  items.forEach((li, i) => {
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
}

export function preview(message, meId) {
  if (!message) return '';
  const who = message.senderId === meId ? 'You: ' : '';
  const text = message.content.replace(/\s+/g, ' ').trim();
  return who + (text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

// ---- messages ----

const STATUS = {
  pending: { symbol: '🕓', label: 'Sending' },
  sent: { symbol: '✓', label: 'Sent' },
  read: { symbol: '✓✓', label: 'Read' },
  failed: { symbol: 'Not sent', label: 'Not sent' },
};

/** A message's li: {id?, seq?, senderName, content, createdAt, clientMsgId?}. */
export function messageItem(m, own, status, onRetry) {
  const li = el('li', {
    class: own ? 'message own' : 'message',
    role: 'article', // a list item's role is not allowed inside role="log"
    'data-message-id': m.id || '',
    'data-seq': m.seq ?? '',
    'data-client-msg-id': m.clientMsgId,
  },
  el('div', { class: 'meta' },
    el('span', { class: 'sender', text: m.senderName || 'Unknown' }),
    el('time', { class: 'timestamp' })),
  el('p', { class: 'content', text: m.content }));
  setTimestamp(li, m.createdAt);
  if (own) {
    li.querySelector('.meta').append(el('span', { class: 'status', role: 'img' }));
    const retry = el('button', { type: 'button', class: 'retry', hidden: true, text: 'Retry' });
    retry.addEventListener('click', () => onRetry(li));
    li.append(retry);
    setStatus(li, status);
  }
  return li;
}

export function setTimestamp(li, createdAt) {
  const time = li.querySelector('time.timestamp');
  const date = new Date(createdAt);
  if (Number.isNaN(date.getTime())) return;
  time.dateTime = date.toISOString();
  time.textContent = formatTime(date);
  time.title = formatFull(date);
}

export function setStatus(li, status) {
  const node = li.querySelector('.status');
  if (!node) return;
  const { symbol, label } = STATUS[status];
  node.dataset.status = status;
  node.textContent = symbol;
  node.setAttribute('aria-label', label);
  node.title = label;
  li.classList.toggle('failed', status === 'failed');
  li.querySelector('.retry').hidden = status !== 'failed';
}

export function statusOf(li) {
  return li.querySelector('.status')?.dataset.status;
}

/** Inserts `li` by seq; messages without a seq (still sending) stay last. */
export function insertBySeq(list, li, seq) {
  let before = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    const other = node.dataset.seq;
    if (other !== '' && Number(other) < seq) break;
    before = node;
  }
  list.insertBefore(li, before);
}
