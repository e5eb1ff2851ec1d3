// `karasu-cost-estimate`: the request form's cost estimate (count × the image model's price
// per image), rewritten as the editor types the number of images or picks another model.
// Exact, as on the server: prices have at most four decimal places, so amounts are counted
// in ten-thousandths of a dollar with BigInt, never in floating point.
(() => {
  const UNIT = 10000n;

  const toUnits = (price) => {
    const [whole, fraction = ''] = String(price).split('.');
    return BigInt(whole || '0') * UNIT + BigInt(`${fraction}0000`.slice(0, 4));
  };

  // As generation.costs.usd(): two decimals, up to four when the amount needs them, with
  // the separators of the editor's language (given by the server, as Django formats them).
  const usd = (units, decimal = '.', thousand = ',') => {
    const whole = (units / UNIT).toString().replace(/\B(?=(\d{3})+(?!\d))/g, thousand);
    const fraction = (units % UNIT).toString().padStart(4, '0').replace(/0+$/, '');
    return `$${whole}${decimal}${fraction.padEnd(2, '0')}`;
  };

  // The server's translated texts use Python's %(name)s placeholders.
  const interpolate = (text, values) =>
    text.replace(/%\((\w+)\)s/g, (match, name) => (name in values ? values[name] : match));

  const register = () => {
    const { Controller } = window.StimulusModule;

    class CostEstimateController extends Controller {
      static targets = ['count', 'output'];

      static values = {
        prices: Object,
        modelField: { type: String, default: 'image_model' },
        emptyText: { type: String, default: 'Estimated cost: enter the number of images.' },
        text: {
          type: String,
          default: 'Estimated cost: %(total)s (%(count)s × %(price)s per image)',
        },
        decimalSeparator: { type: String, default: '.' },
        thousandSeparator: { type: String, default: ',' },
      };

      connect() {
        const { form } = this.countTarget;
        this.model = form ? form.elements.namedItem(this.modelFieldValue) : null;
        this.onModelChange = () => this.update();
        if (this.model) this.model.addEventListener('change', this.onModelChange);
        this.update();
      }

      disconnect() {
        if (this.model) this.model.removeEventListener('change', this.onModelChange);
      }

      update() {
        const text = this.countTarget.value.trim();
        const count = /^\d+$/.test(text) ? BigInt(text) : 0n;
        const price = this.model ? this.pricesValue[this.model.value] : undefined;
        if (count < 1n || price === undefined) {
          this.outputTarget.textContent = this.emptyTextValue;
          return;
        }
        const each = toUnits(price);
        const format = (units) =>
          usd(units, this.decimalSeparatorValue, this.thousandSeparatorValue);
        this.outputTarget.textContent = interpolate(this.textValue, {
          total: format(each * count),
          count: count.toString(),
          price: format(each),
        });
      }
    }

    window.wagtail.app.register('karasu-cost-estimate', CostEstimateController);
  };

  if (window.wagtail && window.wagtail.app) {
    register();
  } else {
    window.addEventListener('DOMContentLoaded', register, { once: true });
  }
})();
