// `karasu-poll`: dispatches `karasu-poll:tick` every `interval` ms while the page is
// visible, so that Wagtail's own `w-swap` controller can refresh part of a page.
(() => {
  const register = () => {
    const { Controller } = window.StimulusModule;
    class PollController extends Controller {
      static values = { interval: { type: Number, default: 3000 } };

      connect() {
        this.timer = window.setInterval(() => {
          if (!document.hidden) this.dispatch('tick');
        }, this.intervalValue);
        // A refresh refused for good (the object deleted, access gone): stop asking. A
        // network error or a 5xx (a deploy under way) is only skipped. w-swap reports it on
        // the element it writes into, which holds this one or is this one.
        this.stop = (event) => {
          const status = event.detail && event.detail.error && event.detail.error.status;
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
