"""Words of the demo source: topic vocabularies, filler, brand suffixes, title styles, name syllables."""

TOPIC_VOCAB = {
    "space": "galaxy orbit rocket comet nebula planet astronaut lunar cosmic star gravity asteroid "
             "telescope solar eclipse station quasar meteor satellite void",
    "cooking": "recipe kitchen spice bread pasta oven flavor sauce garlic baking soup grill dessert "
               "herb butter noodle roast chef pantry salad",
    "mystery": "detective murder clue suspect alibi secret shadow crime witness puzzle motive "
               "inspector poison mansion vanish cipher riddle verdict fog midnight",
    "fantasy": "dragon wizard sword kingdom elf quest magic spell castle rune prophecy sorcerer "
               "throne enchanted goblin realm amulet knight fairy legend",
    "history": "empire war ancient dynasty revolution medieval pharaoh battle treaty colonial rome "
               "viking monarchy archive century crusade republic chronicle senate pioneer",
    "finance": "money invest stock market budget wealth dividend portfolio bank credit economy "
               "trading bond tax savings retirement capital fund inflation profit",
    "fitness": "workout muscle running yoga strength cardio training diet stretch endurance "
               "marathon core protein athlete squat gym pilates sprint recovery health",
    "music": "guitar melody rhythm jazz piano song album concert chord band vinyl drum symphony "
             "lyric tempo blues orchestra harmony opera bass",
    "travel": "journey island passport voyage beach mountain road map backpack hotel coast desert "
              "safari cruise village border compass harbor trail lagoon",
    "gardening": "garden flower seed soil bloom orchard compost rose tulip greenhouse herbal harvest "
                 "vine fern blossom pruning meadow moss orchid hedge",
    "technology": "robot code software algorithm data network cyber circuit startup silicon cloud "
                  "gadget digital machine quantum chip server app laser pixel",
    "romance": "love heart kiss wedding passion desire romance bride summer letter promise affair "
               "dance moonlight sweetheart vow longing flame embrace darling",
}
FILLER = ("the of and a new with in story guide complete edition collection life world secrets "
          "art tales notes classic essential ultimate beyond hidden little great").split()
BRAND_SUFFIXES = ("Press", "Studios", "Works", "House", "Media", "Books")
TITLE_STYLES = ("{name}: Vol. {k}", "{name}, Part {k}", "{name} - Episode {k}", "{name} #{k}")
SYLLABLES = "ka lo mi ren tu vas qi zor el an dra pel sun tor ix mo ve ul".split()
