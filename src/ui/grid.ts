/**
 * The card grid, virtualized: CSS grid lays out the cards, and only the rows near the
 * viewport exist in the DOM; padding above and below stands in for the rest. A batch of
 * thousands of images thus keeps a few dozen cards in the page.
 */
import { createCard, updateCard, type Card } from './card.js';
import { frameScheduler } from './dom.js';
import type { ApiImage } from './types.js';

const OVERSCAN_ROWS = 2;
/** Up to this many cards are all rendered: the browser's find and full-page views then see every one. */
const RENDER_ALL = 120;
const CACHE_LIMIT = 600;

export class VirtualGrid {
  private ids: string[] = [];
  private readonly cards = new Map<string, Card>();
  private shown: string[] = [];
  private cardHeight = 0;
  readonly schedule: () => void;

  constructor(private readonly list: HTMLOListElement, private readonly lookup: (id: string) => ApiImage | undefined) {
    this.schedule = frameScheduler(() => this.layout());
    window.addEventListener('scroll', this.schedule, { passive: true });
    window.addEventListener('resize', this.schedule);
    new ResizeObserver(this.schedule).observe(list);
  }

  /** The ids to show, in order (already filtered). */
  setIds(ids: string[]): void {
    this.ids = ids;
  }

  clear(): void {
    this.ids = [];
    this.shown = [];
    this.cards.clear();
    this.list.replaceChildren();
    this.list.style.paddingTop = this.list.style.paddingBottom = '';
  }

  /** Lays out and refreshes the visible cards; call from an animation frame. */
  layout(): void {
    const { list, ids } = this;
    const computed = getComputedStyle(list);
    const columns = Math.max(1, computed.gridTemplateColumns.split(' ').filter((track) => track.trim() !== '').length);
    const gap = parseFloat(computed.rowGap) || 0;
    const rows = Math.ceil(ids.length / columns);
    let first = 0;
    let last = Math.min(rows, 4);
    if (ids.length <= RENDER_ALL) {
      last = rows;
    } else if (this.cardHeight > 0) {
      const pitch = this.cardHeight + gap;
      const top = list.getBoundingClientRect().top;
      first = Math.max(0, Math.min(rows, Math.floor(-top / pitch) - OVERSCAN_ROWS));
      last = Math.max(first, Math.min(rows, Math.ceil((window.innerHeight - top) / pitch) + OVERSCAN_ROWS));
    }
    const wanted = ids.slice(first * columns, last * columns);
    const same = wanted.length === this.shown.length && wanted.every((id, i) => id === this.shown[i]);
    if (!same) {
      list.replaceChildren(...wanted.map((id, i) => {
        const card = this.card(id);
        card.element.setAttribute('aria-posinset', String(first * columns + i + 1));
        return card.element;
      }));
      this.shown = wanted;
    }
    for (const id of wanted) {
      const image = this.lookup(id);
      if (image) updateCard(this.cards.get(id)!, image);
    }
    for (const id of wanted) this.cards.get(id)!.element.setAttribute('aria-setsize', String(ids.length));
    const height = list.firstElementChild ? (list.firstElementChild as HTMLElement).offsetHeight : 0;
    const pitch = (height || this.cardHeight) + gap;
    list.style.paddingTop = `${first * pitch}px`;
    list.style.paddingBottom = `${Math.max(0, rows - last) * pitch}px`;
    this.list.dataset.rendered = String(wanted.length);
    this.list.dataset.total = String(ids.length);
    if (height > 0 && height !== this.cardHeight) {
      // First layout, or the card size changed with the viewport: lay out again with the real size.
      this.cardHeight = height;
      this.schedule();
    }
    this.trimCache(new Set(wanted));
  }

  private card(id: string): Card {
    let card = this.cards.get(id);
    if (!card) {
      card = createCard(this.lookup(id)!);
      this.cards.set(id, card);
    }
    return card;
  }

  private trimCache(keep: Set<string>): void {
    if (this.cards.size <= CACHE_LIMIT) return;
    for (const id of this.cards.keys()) {
      if (this.cards.size <= CACHE_LIMIT / 2) break;
      if (!keep.has(id)) this.cards.delete(id);
    }
  }
}
