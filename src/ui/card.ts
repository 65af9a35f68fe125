/** One result card. Every string from the server or the user goes in as text. */
import { withKey } from './api.js';
import { h, setText } from './dom.js';
import { formatCount, formatPercent, plural } from './format.js';
import { isError, isOk, type ApiImage } from './types.js';

const STATUS_TEXT: Record<ApiImage['status'], string> = {
  queued: 'Queued',
  processing: 'Processing',
  done: 'Done',
  error: 'Error',
};

export interface Card {
  element: HTMLLIElement;
  image: ApiImage | undefined;
  pill: HTMLSpanElement;
  name: HTMLParagraphElement;
  meta: HTMLParagraphElement;
  outcome: HTMLDivElement;
  outcomeKey: string;
}

export function createCard(image: ApiImage): Card {
  const img = h('img', { attrs: { alt: '', loading: 'lazy', decoding: 'async', width: 320, height: 240 } });
  img.addEventListener('error', () => img.parentElement?.classList.add('thumb-missing'), { once: true });
  img.src = withKey(`/api/images/${encodeURIComponent(image.id)}/input`);
  const pill = h('span', { class: 'pill' });
  const name = h('p', { class: 'name' });
  const meta = h('p', { class: 'meta' });
  const outcome = h('div', { class: 'outcome' });
  const element = h('li', { class: 'card', attrs: { 'data-id': image.id } },
    h('div', { class: 'thumb' }, img, pill),
    h('div', { class: 'card-body' }, name, meta, outcome));
  const card: Card = { element, image: undefined, pill, name, meta, outcome, outcomeKey: '' };
  updateCard(card, image);
  return card;
}

export function updateCard(card: Card, image: ApiImage): void {
  if (card.image === image) return;
  card.image = image;
  const { element } = card;
  element.dataset.status = image.status;
  setText(card.pill, STATUS_TEXT[image.status]);
  setText(card.name, image.name);
  if (card.name.title !== image.name) card.name.title = image.name;
  setText(card.meta, metaText(image));
  const key = `${image.status}:${image.attempts ?? 0}`;
  if (key !== card.outcomeKey) {
    card.outcomeKey = key;
    card.outcome.replaceChildren(...outcomeNodes(image));
  }
}

function metaText(image: ApiImage): string {
  const attempts = image.attempts ?? 0;
  const attempt = attempts > 1 ? ` · attempt ${attempts}` : '';
  const result = image.result;
  switch (image.status) {
    case 'queued':
      return `Waiting for an instance${attempt}`;
    case 'processing':
      return `Processing on ${image.instanceId ?? 'an instance'}${attempt}`;
    case 'done': {
      const where = isOk(result) ? result.instanceId : image.instanceId;
      const took = isOk(result) && result.durationMs !== undefined ? ` · ${formatCount(Math.round(result.durationMs))} ms` : '';
      return `${where ? `on ${where}` : 'Classified'}${took}${attempt}`;
    }
    case 'error':
      return `Failed after ${plural(Math.max(1, attempts), 'attempt')}`;
  }
}

function outcomeNodes(image: ApiImage): Node[] {
  const result = image.result;
  if (image.status === 'done' && isOk(result)) {
    const top1 = h('p', { class: 'top1' },
      h('span', { class: 'top1-label', text: result.label }),
      h('span', { class: 'top1-prob', text: formatPercent(result.probability) }));
    const list = h('ol', { class: 'top5', attrs: { 'aria-label': 'Top 5 labels' } });
    for (const prediction of result.top5.slice(0, 5)) {
      const fill = h('span', { class: 'fill' });
      fill.style.width = `${Math.max(0, Math.min(100, prediction.probability * 100)).toFixed(1)}%`;
      list.append(h('li', {},
        h('span', { class: 't-label', text: prediction.label, attrs: { title: prediction.label } }),
        h('span', { class: 't-bar', attrs: { 'aria-hidden': 'true' } }, fill),
        h('span', { class: 't-prob', text: formatPercent(prediction.probability) })));
    }
    return [top1, list];
  }
  if (image.status === 'error') {
    return [h('p', { class: 'error-reason', text: isError(result) ? result.error : 'no result' })];
  }
  return [h('div', { class: 'skeleton', attrs: { 'aria-hidden': 'true' } }, h('span'), h('span'), h('span'))];
}
