// `karasu-poll`: dispatches `karasu-poll:tick` every `interval` ms while the page is
// visible, so that Wagtail's own `w-swap` controller can refresh part of a page.
(() => {
  const register = () => {
    const { Controller } = window.StimulusModule;
    class PollController extends Controller {
      static values = { interval: { type: Number, default: 3000 } };

      connect() {
        this.timer = window.setInterval(() => {
          // Not while hidden, nor while the last refresh is still on its way (w-swap marks
          // what it writes into busy): a new one would cancel it, and a slow answer would
          // never arrive.
          if (document.hidden || this.element.closest('[aria-busy="true"]')) return;
          this.dispatch('tick');
        }, this.intervalValue);
        // A refresh refused for good (the object deleted, access gone): stop asking. A
        // network error or a 5xx (a deploy under way) is only skipped. w-swap reports it on
        // the element it writes into, which holds this one or is this one.
        this.stop = (event) => {
          const status = event.detail && event.detail.error && event.detail.error.status;
          // Only this element's own refresh: a form's error elsewhere in the same part of the
          // page (the chooser's Generate form) says nothing about it.
          const own = (event.detail && event.detail.requestUrl) || '';
          const src = this.element.getAttribute('data-w-swap-src-value');
          if (src && !own.startsWith(src)) return;
          if ([401, 403, 404].includes(status) && event.target.contains(this.element)) {
            window.clearInterval(this.timer);
          }
        };
        document.addEventListener('w-swap:error', this.stop);
      }

      disconnect() {
        window.clearInterval(this.timer);
        document.removeEventListener('w-swap:error', this.stop);
      }
    }
    window.wagtail.app.register('karasu-poll', PollController);
  };
  if (window.wagtail && window.wagtail.app) {
    register();
  } else {
    window.addEventListener('DOMContentLoaded', register, { once: true });
  }
})();
