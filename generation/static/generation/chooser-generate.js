// The image chooser's Generate tab (generation/views/chooser.py).
//
// A candidate is chosen as Wagtail's own results are, by loading its "chosen" (or
// "select_format") URL into the modal. Wagtail binds its result links once, when the chooser
// opens; candidates arrive later, so one listener on the modal's body takes their clicks.
// The modal is only known to the chooser's onload handlers, which Wagtail keeps in
// window.IMAGE_CHOOSER_MODAL_ONLOAD_HANDLERS for every image chooser (fields, StreamField
// blocks, rich text) and assigns afresh whenever its image-chooser-modal.js runs again, so
// each object assigned there gets its "choose" step wrapped.
(() => {
  const listenForCandidates = (modal) => {
    const body = modal.body && modal.body.jquery ? modal.body[0] : modal.body;
    if (!body || body.dataset.karasuCandidates) return;
    body.dataset.karasuCandidates = 'true';
    body.addEventListener('click', (event) => {
      const link = event.target.closest('a[data-karasu-candidate]');
      if (!link || !body.contains(link)) return;
      event.preventDefault();
      modal.loadUrl(link.href);
    });
  };

  const wrapped = new WeakSet();
  const wrap = (handlers) => {
    if (!handlers || wrapped.has(handlers) || typeof handlers.choose !== 'function') {
      return handlers;
    }
    const choose = handlers.choose;
    // eslint-disable-next-line no-param-reassign
    handlers.choose = (modal, jsonData) => {
      choose(modal, jsonData);
      listenForCandidates(modal);
    };
    wrapped.add(handlers);
    return handlers;
  };

  let handlers = wrap(window.IMAGE_CHOOSER_MODAL_ONLOAD_HANDLERS);
  Object.defineProperty(window, 'IMAGE_CHOOSER_MODAL_ONLOAD_HANDLERS', {
    configurable: true,
    enumerable: true,
    get: () => handlers,
    set: (value) => {
      handlers = wrap(value);
    },
  });

  // Never leave the page for a candidate's URL (its JSON answer), even in a modal whose
  // handlers were not wrapped: the body's listener above runs first.
  document.addEventListener('click', (event) => {
    if (event.target.closest && event.target.closest('a[data-karasu-candidate]')) {
      event.preventDefault();
    }
  });

  // After Generate, focus what the answer says (the start notice or the error) rather than
  // losing it with the form the answer replaced; then keep screen readers told of progress.
  const say = (panel) => {
    const status = document.getElementById('karasu-generate-status');
    const summary = panel && panel.querySelector('[data-karasu-summary]');
    const text = summary ? summary.dataset.karasuSummary : '';
    if (status && text && status.textContent !== text) status.textContent = text;
  };
  document.addEventListener('w-swap:success', (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    if (target.id === 'karasu-generate') {
      const focus = target.querySelector('[data-karasu-focus]');
      if (focus) focus.focus();
      say(target);
    } else if (target.id === 'karasu-recent') {
      say(target);
    }
  });
})();
