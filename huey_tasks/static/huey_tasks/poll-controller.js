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
      }

      disconnect() {
        window.clearInterval(this.timer);
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
